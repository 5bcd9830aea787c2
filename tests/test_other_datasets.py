"""Data sets other than MNIST: any IDX set by directory, its image shape and class count everywhere.

The sets are made here: 20 classes of 16x16 gray images (some files gzip-compressed, some not) and
6 classes of 32x32 RGB images (4-dimensional IDX). Each goes through the real command line (train
with figures, evaluate, predict, resume, sweep), and `--validation-size` through its refusals.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import write_idx
from jaxlin.cli.main import main
from jaxlin.data.download import IDX_FILES
from jaxlin.runs.params_file import load_params
from jaxlin.runs.predict import to_input

FIGURES = {"example_images.png", "misclassified.png", "weights.png", "confusion_matrix.png", "learning_curve.png"}
STEPS = ["--num-steps", "20", "--eval-every", "10", "--batch-size", "50", "--no-progress"]


def twenty_classes(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16x16 gray images: class c lights its own 3x4 block (5 rows x 4 columns of blocks), plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 20, num).astype(np.uint8)
    labels[:20] = np.arange(20)  # every class in every split
    images = rng.integers(0, 60, (num, 16, 16)).astype(np.uint8)
    for c in range(20):
        row, col = 3 * (c // 4), 4 * (c % 4)
        images[labels == c, row:row + 3, col:col + 4] = 255
    return images, labels


def six_colours(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """32x32 RGB images: class c lights channel c % 3 in the top (c < 3) or bottom half, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, num).astype(np.uint8)
    images = rng.integers(0, 60, (num, 32, 32, 3)).astype(np.uint8)
    for c in range(6):
        rows = slice(0, 16) if c < 3 else slice(16, 32)
        images[labels == c, rows, :, c % 3] = 255
    return images, labels


def write_set(directory: Path, make, num_train: int, num_test: int, compressed=("train_images", "test_labels")):
    directory.mkdir(parents=True, exist_ok=True)
    train, test = make(num_train, 0), make(num_test, 1)
    arrays = {"train_images": train[0], "train_labels": train[1], "test_images": test[0], "test_labels": test[1]}
    for key, array in arrays.items():
        compress = key in compressed
        write_idx(directory / (IDX_FILES[key] + (".gz" if compress else "")), array, compress)
    return directory


@pytest.fixture(scope="module")
def letters_dir(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("letters20"), twenty_classes, 1200, 300)


@pytest.fixture(scope="module")
def colours_dir(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("colours"), six_colours, 700, 120)


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
def test_twenty_classes_train_evaluate_predict_and_resume(letters_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data-dir", str(letters_dir), "--dataset", "letters20", "--output-dir", str(out)]
    assert main(["train", *common, "--validation-size", "200", *STEPS]) == 0
    printed = capsys.readouterr().out
    assert "16x16x1 images, 20 classes; train 1000, validation 200, test 300" in printed
    assert "Figures not drawn" not in printed and "No weights figure" not in printed
    assert FIGURES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    confusion = np.array(metrics["final_test_confusion_matrix"])
    assert confusion.shape == (20, 20) and confusion.sum() == 300
    assert len(metrics["final_test_per_class_accuracy"]) == 20
    assert metrics["data"]["num_classes"] == 20 and metrics["data"]["image_shape"] == [16, 16, 1]
    assert metrics["config"]["validation_size"] == 200 and metrics["config"]["dataset"] == "letters20"
    assert metrics["model"] == "linear 256-20" and metrics["final_test_accuracy"] > 0.5

    assert main(["evaluate", str(out / "params.npz"), "--data-dir", str(letters_dir), "--dataset", "letters20",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_accuracy"] == metrics["final_test_accuracy"]
    assert report["confusion_matrix"] == metrics["final_test_confusion_matrix"] and report["num_classes"] == 20

    # A test image as a file at four times the size: predict makes it 16x16 the MNIST way (cropped to the
    # mark, scaled into 11x11 = 20/28 of 16, centred), which moves these position-coded classes; so the
    # check is that it classifies that 16x16 image as the params do, over 20 classes.
    images, labels = twenty_classes(300, 1)
    big = np.kron(np.where(images[0] == 255, 255, 0).astype(np.uint8), np.ones((4, 4), np.uint8))
    path = _png(tmp_path / "mark.png", big)
    assert main(["predict", str(out / "params.npz"), str(path), "--json"]) == 0
    [prediction] = json.loads(capsys.readouterr().out)
    assert len(prediction["probabilities"]) == 20
    made = to_input(str(path), (16, 16, 1))
    assert made.shape == (256,) and made.reshape(16, 16).any(axis=1).sum() <= 11
    params, model = load_params(out / "params.npz")
    logits = np.asarray(model.apply(params, made[None].astype(np.float32) / 255))
    assert prediction["label"] == int(np.argmax(logits))

    # Resumed with the command jaxlin prints: the model is rebuilt for the recorded 16x16, 20-class data.
    assert main(["train", *common, "--resume", "--num-steps", "30", "--no-progress"]) == 0
    assert "Resuming" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["num_steps"] == 30
    assert main(["train", *common, "--resume", "--num-steps", "40", "--validation-size", "100"]) == 2
    assert "--validation-size 100 (the checkpoint has 200)" in capsys.readouterr().err


@pytest.mark.slow
def test_colour_images_train_with_figures_evaluate_and_predict(colours_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(colours_dir), "--dataset", "colours", "--output-dir", str(out),
                 "--validation-size", "100", *STEPS]) == 0
    printed = capsys.readouterr().out
    assert "32x32x3 images, 6 classes" in printed and "Figures not drawn" not in printed
    assert FIGURES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.array(metrics["final_test_confusion_matrix"]).shape == (6, 6)
    assert metrics["model"] == "linear 3072-6"
    assert main(["evaluate", str(out / "params.npz"), "--data-dir", str(colours_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == metrics["final_test_accuracy"]

    # A 64x48 RGB file of class 4 (green bottom half): resized to 32x32x3 as it is.
    picture = np.zeros((64, 48, 3), np.uint8)
    picture[32:, :, 1] = 255
    assert main(["predict", str(out / "params.npz"), str(_png(tmp_path / "green.png", picture)), "--json"]) == 0
    [prediction] = json.loads(capsys.readouterr().out)
    assert len(prediction["probabilities"]) == 6 and prediction["label"] == 4

    # The MNIST-shaped test set is not what these params take: one line.
    assert main(["evaluate", str(out / "params.npz"), "--data-dir", str(_mnist_like(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "the params were trained on 32x32x3 images; mnist-like's are 28x28x1 (784 values)" in err
    assert len(err.strip().splitlines()) == 1


def _mnist_like(tmp_path: Path) -> Path:
    from helpers import write_dataset

    return write_dataset(tmp_path / "mnist-like", 200, 20)


def test_a_validation_size_that_leaves_no_training_data_is_one_line_and_writes_nothing(letters_dir, tmp_path,
                                                                                        capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(letters_dir), "--output-dir", str(out), "--validation-size", "1200",
                 *STEPS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxlin: error: validation size 1200 does not fit 1200 examples: it leaves no training")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
    assert main(["train", "--output-dir", str(out), "--validation-size", "-1", *STEPS]) == 2
    assert "validation size must be an integer >= 0, got -1" in capsys.readouterr().err


def test_a_sweep_chooses_on_a_small_validation_set_and_refuses_none(letters_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    common = ["sweep", "--data-dir", str(letters_dir), "--output-dir", str(out), "--num-steps", "10",
              "--eval-every", "10", "--batch-size", "50", "--learning-rates", "0.1,0.5", "--no-progress"]
    assert main([*common, "--validation-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "--validation-size 0: a sweep chooses its best member on validation accuracy" in err
    assert len(err.strip().splitlines()) == 1
    assert main([*common, "--validation-size", "50"]) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["best"] is not None and "(50 images held out of training)" in summary["selection"]
    assert summary["data"]["num_classes"] == 20
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert np.array(best["final_test_confusion_matrix"]).shape == (20, 20)


def test_flat_features_that_are_not_pictures_train_with_notes_for_the_figures_left_out(tmp_path):
    """(n, 50) arrays: no image grids and no weights figure, each said in a note; the rest is written."""
    from jaxlin.config import Config
    from jaxlin.data.datasets import Datasets
    from jaxlin.runs.train_run import train_and_evaluate

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    features = rng.integers(0, 50, (400, 50)).astype(np.uint8)
    features[np.arange(400), labels] = 255
    data = Datasets.from_arrays(features[:300], labels[:300], features[300:], labels[300:], validation_size=50)
    assert data.image_shape == (1, 50, 1) and data.num_classes == 3
    lines = []
    out = tmp_path / "run"
    metrics = train_and_evaluate(Config(num_steps=10, eval_every=10, batch_size=25, output_dir=str(out)),
                                 progress=False, data=data, log=lines.append)
    assert np.array(metrics["final_test_confusion_matrix"]).shape == (3, 3)
    assert metrics["config"]["validation_size"] == 50
    assert "(No example or misclassified images: arrays's inputs (1x50x1) are not pictures.)" in lines
    assert "(No weights figure: the inputs of the linear's first layer are not 1x50x1 images.)" in lines
    assert {p.name for p in out.glob("*.png")} == {"confusion_matrix.png", "learning_curve.png"}


def test_a_figure_that_fails_is_a_note_and_the_run_still_finishes(letters_dir, tmp_path, monkeypatch, capsys):
    """Outside the tests (which make it raise), a failure to draw cannot fail a trained run."""
    from jaxlin.runs import plots

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.delenv("JAXLIN_FIGURE_ERRORS_RAISE")
    monkeypatch.setattr(plots, "draw_run_figures", broken)
    monkeypatch.setattr("jaxlin.runs.figure_worker.FigureWorker.start", classmethod(lambda cls: None))
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(letters_dir), "--output-dir", str(out), "--validation-size", "200",
                 *STEPS]) == 0
    assert "(Figures not drawn: RuntimeError: no fonts today; the other outputs are complete.)" in \
        capsys.readouterr().out
    assert (out / "metrics.json").is_file() and (out / "params.npz").is_file() and not list(out.glob("*.png"))


def test_a_sweep_whose_figures_fail_still_finishes_and_says_so(letters_dir, tmp_path, monkeypatch, capsys):
    from jaxlin.runs import plots

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.delenv("JAXLIN_FIGURE_ERRORS_RAISE")
    monkeypatch.setattr(plots, "draw_run_figures", broken)
    monkeypatch.setattr(plots, "plot_sweep", broken)
    out = tmp_path / "sweep"
    assert main(["sweep", "--data-dir", str(letters_dir), "--output-dir", str(out), "--num-steps", "10",
                 "--eval-every", "10", "--batch-size", "50", "--learning-rates", "0.1,0.5", "--no-progress",
                 "--validation-size", "50"]) == 0
    shown = capsys.readouterr().out
    assert "(Sweep figure not drawn: RuntimeError: no fonts today; the other outputs are complete.)" in shown
    assert "(Figures not drawn: RuntimeError: no fonts today; the other outputs are complete.)" in shown
    assert (out / "sweep.json").is_file() and (out / "best" / "params.npz").is_file()
    assert not list(out.rglob("*.png"))


def test_the_mlp_size_check_uses_the_data_sizes():
    """784 inputs and 10 classes until the data is loaded; then the data's own sizes."""
    from jaxlin.config import Config, ConfigError

    config = Config(model="mlp", hidden_sizes=(100_000,))
    config.validate(1000)  # MNIST: 784 x 100,000 + ... = 79 million params, under 2**28
    config.validate(1000, input_size=256, num_classes=20)
    params = 3072 * 100_000 + 100_000 + 100_000 * 6 + 6
    with pytest.raises(ConfigError, match=rf"hidden sizes \[100000\] make {params:,} params"):
        config.validate(1000, input_size=3072, num_classes=6)


def test_arrays_with_an_empty_test_split_are_refused_in_one_line():
    from jaxlin.data.datasets import Datasets, DataError

    images, labels = twenty_classes(60, 0)
    with pytest.raises(DataError, match="^test arrays: the test split holds no images"):
        Datasets.from_arrays(images, labels, images[:0], labels[:0], validation_size=10)
    from jaxlin.data.datasets import Split

    train = Split.from_arrays(images, labels)
    with pytest.raises(DataError, match="^mine: the test split holds no images"):
        Datasets(train, train, Split.from_arrays(images[:0], labels[:0]), name="mine")


def test_resuming_on_other_data_of_the_same_shape_is_refused_naming_both(letters_dir, tmp_path, capsys):
    other = write_set(tmp_path / "other20", twenty_classes, 1200, 300, compressed=())
    (other / "train-labels-idx1-ubyte").write_bytes((letters_dir / "train-labels-idx1-ubyte").read_bytes())
    out = tmp_path / "run"
    common = ["--output-dir", str(out), "--validation-size", "200"]
    assert main(["train", "--data-dir", str(letters_dir), *common, *STEPS]) == 0
    capsys.readouterr()
    images = other / "train-images-idx3-ubyte"  # same shape and classes: one pixel differs
    body = bytearray(images.read_bytes())
    body[-1] ^= 1
    images.write_bytes(bytes(body))
    assert main(["train", "--data-dir", str(other), *common, "--resume", "--num-steps", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"jaxlin: error: --resume: the run in {out} trained on other data (")
    assert str(letters_dir) in err and str(other) in err and len(err.splitlines()) == 1
    assert main(["train", "--data-dir", str(letters_dir), *common, "--resume", "--num-steps", "40"]) == 0


def test_a_checkpoint_without_a_data_fingerprint_resumes_with_a_note(tiny_data, tmp_path):
    from jaxlin.runs.session import check_same_data

    lines = []
    check_same_data({"data": {"image_shape": [28, 28, 1], "num_classes": 10}}, tiny_data, tmp_path, 10, lines.append)
    check_same_data({}, tiny_data, tmp_path, 10, lines.append)
    assert len(lines) == 2 and "does not record which data it trained on" in lines[0]


def test_data_is_named_after_what_it_is_and_a_wrong_dataset_name_is_refused(letters_dir, tmp_path, capsys,
                                                                            monkeypatch):
    from jaxlin.data import datasets
    from jaxlin.data.download import FILES
    from jaxlin.data.idx import content_sha256, read_idx_files

    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(letters_dir), "--output-dir", str(out), "--validation-size", "200", *STEPS,
                 "--dry-run"]) == 0
    assert f"Data: {letters_dir.name} from {letters_dir}: 16x16x1" in capsys.readouterr().out
    # Files named as MNIST's gz files whose content is MNIST's (here: made to look so) are named mnist ...
    gz = write_set(tmp_path / "mnist", twenty_classes, 1200, 300,
                   compressed=("train_images", "train_labels", "test_images", "test_labels"))
    arrays = read_idx_files(gz)
    known = {"mnist": tuple(dataclasses_replace(f, content_sha256(arrays[key]))
                            for key, f in zip(("train_images", "train_labels", "test_images", "test_labels"),
                                              FILES["mnist"])),
             "fashion_mnist": FILES["fashion_mnist"]}
    monkeypatch.setattr(datasets.download, "FILES", known)
    assert datasets.load_datasets(data_dir=gz, validation_size=200).name == "mnist"
    assert main(["train", "--data-dir", str(gz), "--output-dir", str(out), "--validation-size", "200", *STEPS,
                 "--dry-run"]) == 0
    assert f"Data: mnist from {gz}" in capsys.readouterr().out
    # ... and --dataset naming a set whose known files they contradict is refused, before anything is written.
    assert main(["train", "--data-dir", str(gz), "--dataset", "fashion_mnist", "--output-dir", str(out),
                 "--validation-size", "200", *STEPS]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"jaxlin: error: --dataset fashion_mnist: {gz / 'train-labels-idx1-ubyte.gz'} is not "
                   f"fashion_mnist's file (its content differs from fashion_mnist's known sha256); point --data-dir "
                   f"at fashion_mnist's files, or drop --dataset to name the data after its directory")
    assert not out.exists()
    # jaxlin evaluate checks the name the same way.
    from jaxlin.models import get_model
    from jaxlin.runs.params_file import save_params

    model = get_model("linear", num_classes=20, image_shape=(16, 16, 1))
    save_params(tmp_path / "p.npz", model.init(jax.random.key(0)), model, (16, 16, 1))
    assert main(["evaluate", str(tmp_path / "p.npz"), "--data-dir", str(gz), "--dataset", "fashion_mnist"]) == 2
    assert "is not fashion_mnist's file" in capsys.readouterr().err
    # Uncompressed files under the known names are checked and named the same way (the known sha256 is of
    # the uncompressed content).
    plain = write_set(tmp_path / "plain", twenty_classes, 1200, 300, compressed=())
    assert datasets.load_datasets(data_dir=plain, validation_size=200).name == "mnist"
    assert main(["train", "--data-dir", str(plain), "--dataset", "fashion_mnist", "--output-dir", str(out),
                 "--validation-size", "200", *STEPS]) == 2
    assert f"{plain / 'train-labels-idx1-ubyte'} is not fashion_mnist's file" in capsys.readouterr().err
    assert not out.exists()
    # A directory called like a known set without its content is not named after it.
    monkeypatch.setattr(datasets.download, "FILES", {"mnist": FILES["mnist"]})
    assert datasets.load_datasets(data_dir=gz, validation_size=200).name == "mnist-dir"


def test_no_validation_set_trains(tiny_data_dir, tmp_path, capsys):
    """--validation-size 0 holds out nothing: the run trains (its data fingerprint covers an empty split)."""
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--validation-size", "0",
                 "--no-figures", *STEPS]) == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["config"]["validation_size"] == 0


def dataclasses_replace(remote, sha256):
    import dataclasses

    return dataclasses.replace(remote, sha256=sha256)


def test_a_folder_with_both_a_gz_and_a_plain_file_is_refused(letters_dir, tmp_path):
    import shutil

    from jaxlin.data.datasets import DataError, load_datasets

    both = shutil.copytree(letters_dir, tmp_path / "both")
    write_idx(both / "train-images-idx3-ubyte", twenty_classes(1200, 5)[0], False)
    with pytest.raises(DataError, match=rf"^{both} holds both train-images-idx3-ubyte.gz and train-images-idx3-ubyte: "
                                        rf"keep one of them"):
        load_datasets(data_dir=both)
