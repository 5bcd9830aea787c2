"""Evaluation metrics, on every example."""

import jax
import numpy as np
import pytest

from jaxlin.training.evaluate import Evaluator, confusion_matrix, evaluate, per_class_accuracy
from jaxlin.models import get_model


def test_confusion_matrix_and_per_class_accuracy():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 0, 2])
    confusion = confusion_matrix(labels, predictions, num_classes=4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(per_class_accuracy(confusion), [0.5, 1.0, 2 / 3, 0.0])


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10, 64])
def test_no_example_is_dropped(batch_size):
    model = get_model("mlp", hidden_sizes=(8,))
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (10, 784)).astype(np.uint8), rng.integers(0, 10, 10)
    expected = np.argmax(model.apply(params, images / np.float32(255)), axis=1)
    report = Evaluator(model.apply, images, labels, batch_size=batch_size)(params)
    np.testing.assert_array_equal(report["predictions"], expected)
    assert report["num_examples"] == 10 and np.sum(report["confusion_matrix"]) == 10
    assert report["accuracy"] == np.mean(expected == labels)


def test_accuracy_and_confusion_matrix_come_from_one_path(tiny_data):
    model = get_model("linear")
    params = [{"w": np.random.default_rng(1).normal(size=(784, 10)).astype(np.float32),
               "b": np.zeros(10, np.float32)}]
    evaluator = Evaluator(model.apply, tiny_data.test.images_uint8, tiny_data.test.labels, batch_size=256)
    report = evaluator(params)
    assert report["accuracy"] == np.trace(report["confusion_matrix"]) / 1003 == evaluator.accuracy(params)
    np.testing.assert_allclose(np.diag(report["confusion_matrix"]) / np.sum(report["confusion_matrix"], axis=1),
                               report["per_class_accuracy"])


def test_an_empty_split_has_no_accuracy():
    model = get_model("linear")
    report = Evaluator(model.apply, np.zeros((0, 784), np.uint8), np.zeros(0, np.int32))(
        model.init(jax.random.key(0)))
    assert report["accuracy"] is None and report["num_examples"] == 0


def test_evaluate_counts_every_test_image(tiny_data):
    model = get_model("linear")
    params = model.init(jax.random.key(0))  # zeros: every prediction is class 0
    report = evaluate(model.apply, params, tiny_data.test, batch_size=100)  # 1,003 = 10 x 100 + 3
    assert report["num_examples"] == 1003 and len(report["predictions"]) == 1003
    assert report["accuracy"] == pytest.approx(np.mean(tiny_data.test.labels == 0))
    assert np.sum(report["confusion_matrix"]) == 1003
    assert np.asarray(report["confusion_matrix"])[:, 1:].sum() == 0


def test_jaxlin_evaluate_verifies_the_params_and_notes_an_older_file(tiny_data_dir, tmp_path, capsys):
    """`jaxlin evaluate` reads params through load_params: a file with its digest evaluates quietly, one
    from an older jaxlin (no digest) evaluates with a one-line note, a damaged one is one error line."""
    import zipfile

    from jaxlin.runs.params_file import DIGEST_KEY, save_params
    from jaxlin.cli.main import main

    model = get_model("linear")
    save_params(tmp_path / "new.npz", model.init(jax.random.key(0)), model)
    assert main(["evaluate", str(tmp_path / "new.npz"), "--data-dir", str(tiny_data_dir), "--json"]) == 0
    assert capsys.readouterr().err == ""
    with np.load(tmp_path / "new.npz", allow_pickle=False) as archive:
        np.savez(tmp_path / "old.npz", **{name: archive[name] for name in archive.files if name != DIGEST_KEY})
    assert main(["evaluate", str(tmp_path / "old.npz"), "--data-dir", str(tiny_data_dir), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == f"jaxlin: note: {tmp_path / 'old.npz'} has no digest (written by an older jaxlin); not verified\n"
    assert out.startswith("{")
    with zipfile.ZipFile(tmp_path / "new.npz") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["layers/0/b.npy"] = members["layers/0/b.npy"][:-4] + np.float32(1.0).tobytes()
    with zipfile.ZipFile(tmp_path / "changed.npz", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    assert main(["evaluate", str(tmp_path / "changed.npz"), "--data-dir", str(tiny_data_dir)]) == 2
    assert capsys.readouterr().err == (f"jaxlin: error: {tmp_path / 'changed.npz'}: params file is damaged "
                                       f"(digest mismatch)\n")


def test_the_placed_batches_are_public_and_padded_to_whole_batches():
    model = get_model("linear")
    images = np.arange(5 * 784).reshape(5, 784).astype(np.uint8)
    evaluator = Evaluator(model.apply, images, np.zeros(5, np.int32), batch_size=2)
    assert evaluator.batches.shape == (3, 2, 784)
    np.testing.assert_array_equal(np.asarray(evaluator.batches).reshape(6, 784)[:5], images)
    assert not np.any(np.asarray(evaluator.batches)[2, 1])


def test_jaxlin_evaluate_names_the_data_after_what_it_is(tiny_data_dir, tmp_path, capsys):
    """Without --dataset, a directory's data is named after it (not "mnist" whatever it holds)."""
    from jaxlin.runs.params_file import save_params
    from jaxlin.cli.main import main

    model = get_model("linear")
    save_params(tmp_path / "p.npz", model.init(jax.random.key(0)), model)
    assert main(["evaluate", str(tmp_path / "p.npz"), "--data-dir", str(tiny_data_dir)]) == 0
    assert f"Data: {tiny_data_dir.name} test split: 28x28x1 images" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "p.npz"), "--data-dir", str(tiny_data_dir), "--dataset", "digits"]) == 0
    assert "Data: digits test split" in capsys.readouterr().out
