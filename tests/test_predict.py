"""`jaxlin predict`: image files made into MNIST images and classified like the originals."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from jaxlin.runs.params_file import save_params
from jaxlin.cli.main import main
from jaxlin.config import Config
from jaxlin.training.evaluate import Evaluator
from jaxlin.models import get_model
from jaxlin.runs.predict import ImageError, to_mnist
from jaxlin.training.trainer import fit

NUM_DIGITS = 30


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory):
    model = get_model("linear")
    result = fit(Config(num_steps=300, eval_every=300), mnist, model, progress=False)
    path = tmp_path_factory.mktemp("params") / "params.npz"
    save_params(path, result.params, model)
    return path, result.params, model


def _as_scan(image_uint8: np.ndarray, path, scale: int = 4, margin=(70, 40)) -> None:
    """A test digit as a user would photograph it: large, black on white, off-centre in a wide margin."""
    digit = Image.fromarray(255 - image_uint8.reshape(28, 28)).resize((28 * scale, 28 * scale),
                                                                      Image.Resampling.BICUBIC)
    canvas = Image.new("L", (28 * scale + 2 * margin[0], 28 * scale + 2 * margin[1] + 30), 255)
    canvas.paste(digit, margin)
    canvas.convert("RGB").save(path)


def test_large_black_on_white_digits_are_classified_like_the_originals(mnist, trained, tmp_path, capsys):
    params_path, params, model = trained
    originals = mnist.test.images_uint8[:NUM_DIGITS]
    expected = Evaluator(model.apply, originals, mnist.test.labels[:NUM_DIGITS])(params)["predictions"]
    paths = []
    for i, image in enumerate(originals):
        paths.append(tmp_path / f"digit{i}.png")
        _as_scan(image, paths[-1])
    assert main(["predict", str(params_path), *map(str, paths), "--json"]) == 0
    predicted = [r["label"] for r in json.loads(capsys.readouterr().out)]
    agree = np.mean(np.array(predicted) == expected)
    assert agree >= 0.9, (predicted, expected.tolist())


def test_preprocessing_recovers_an_mnist_digit(mnist, tmp_path):
    original = mnist.test.images_uint8[0].reshape(28, 28)
    _as_scan(original.reshape(-1), tmp_path / "d.png")
    made = to_mnist(Image.open(tmp_path / "d.png").convert("L")).astype(np.float32)
    assert made.shape == (28, 28) and made.max() == 255
    correlation = np.corrcoef(made.ravel(), original.ravel().astype(np.float32))[0, 1]
    assert correlation > 0.8
    rows, cols = np.nonzero(made > 50)
    assert rows.max() - rows.min() <= 20 and cols.max() - cols.min() <= 20  # fits MNIST's 20x20 box


def test_bad_files_are_named_and_the_others_still_classified(trained, mnist, tmp_path, capsys):
    params_path = trained[0]
    good = tmp_path / "seven.png"
    _as_scan(mnist.test.images_uint8[0], good)
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    bad = [tmp_path / "text.png", tmp_path / "empty.jpg", tmp_path / "blank.png", tmp_path / "absent.png",
           tmp_path]
    assert main(["predict", str(params_path), *map(str, bad[:2]), str(good), *map(str, bad[2:])]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}: 7  (7: ")
    lines = err.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("jaxlin: error: ") for line in lines)
    assert "text.png: not an image that can be read" in lines[0] and "empty.jpg: not an image" in lines[1]
    assert "_io." not in lines[0] + lines[1]  # no Python object in the message
    assert "blank.png: the image is blank" in lines[2] and "absent.png: no such file" in lines[3]
    assert lines[4].endswith(f"{tmp_path}: is a directory")


def test_predict_needs_a_params_file(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", str(tmp_path / "none.npz"), str(tmp_path / "x.png")]) == 2
    assert "no such params file" in capsys.readouterr().err


def test_an_empty_image_is_an_error():
    with pytest.raises(ImageError, match="empty"):
        to_mnist(Image.new("L", (0, 0)))


def test_models_other_than_linear_predict_too(tmp_path, mnist, capsys):
    model = get_model("cnn")
    save_params(tmp_path / "cnn.npz", model.init(jax.random.key(0)), model)
    _as_scan(mnist.test.images_uint8[1], tmp_path / "two.png")
    assert main(["predict", str(tmp_path / "cnn.npz"), str(tmp_path / "two.png"), "--top", "2"]) == 0
    assert capsys.readouterr().out.count("%") == 2


def test_sixteen_bit_and_transparent_images(trained, mnist, tmp_path, capsys):
    digit = np.asarray(Image.fromarray(mnist.test.images_uint8[1].reshape(28, 28)).resize((112, 112)))
    sixteen = np.full((200, 200), 65535, np.uint16)
    sixteen[40:152, 40:152] = 65535 - digit.astype(np.uint16) * 257
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    strokes = np.zeros((200, 200, 4), np.uint8)
    strokes[40:152, 40:152, 3] = digit  # black strokes, drawn only in the alpha channel
    Image.fromarray(strokes, "RGBA").save(tmp_path / "strokes.png")
    speck = np.full((200, 200), 255, np.uint8)
    speck[100, 100] = 0
    Image.fromarray(speck).save(tmp_path / "speck.png")
    paths = [tmp_path / "sixteen.png", tmp_path / "strokes.png", tmp_path / "speck.png"]
    assert main(["predict", str(trained[0]), *map(str, paths), "--json"]) == 2
    results = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in results[:2]] == [2, 2]
    assert "no digit found" in results[2]["error"]


def test_a_params_file_with_a_huge_array_is_refused_from_its_header(tmp_path, capsys):
    spec = json.dumps({"name": "linear", "layer_sizes": [784, 10], "activation": "none"})
    np.savez_compressed(tmp_path / "bomb.npz", **{"layers/0/w": np.zeros((784, 400_000), np.float32)},
                        __model__=np.array(spec))
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", str(tmp_path / "bomb.npz"), str(tmp_path / "x.png")]) == 2
    assert "layers/0/w holds 313,600,000 values, more than any model here" in capsys.readouterr().err


@pytest.fixture
def zero_params(tmp_path):
    model = get_model("linear")
    save_params(tmp_path / "zero.npz", model.init(jax.random.key(0)), model)
    return tmp_path / "zero.npz"


def _digit_pixels(dtype=np.float32) -> np.ndarray:
    pixels = np.zeros((60, 60), dtype)
    pixels[10:50, 25:35] = 1000.5
    return pixels


def test_a_float_image_with_nan_or_infinity_is_one_error_and_the_others_go_on(zero_params, tmp_path, capsys):
    paths = []
    for name, bad in (("nan", np.nan), ("inf", np.inf), ("minus_inf", -np.inf), ("fine", None)):
        pixels = _digit_pixels()
        if bad is not None:
            pixels[5, 5] = bad
        Image.fromarray(pixels, "F").save(tmp_path / f"{name}.tiff")
        paths.append(tmp_path / f"{name}.tiff")
    assert main(["predict", str(zero_params), *map(str, paths)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"{paths[3]}: 0  (") and out.count("\n") == 1
    assert err.splitlines() == [f"jaxlin: error: {path}: image holds non-finite values" for path in paths[:3]]
    with pytest.raises(ImageError, match="non-finite"):
        to_mnist(np.full((28, 28), np.nan))


def test_a_fifo_as_an_image_or_as_params_is_refused_without_waiting(zero_params, tmp_path, capsys):
    import os
    import threading

    os.mkfifo(tmp_path / "fifo.png")
    Image.fromarray((_digit_pixels() > 0).astype(np.uint8) * 255).save(tmp_path / "digit.png")
    codes = []

    def run(*args):
        # In a thread: should a FIFO ever be opened for reading, it would wait for a writer forever.
        worker = threading.Thread(target=lambda: codes.append(main(["predict", *map(str, args)])), daemon=True)
        worker.start()
        worker.join(120)
        return codes.pop() if codes else "still waiting"

    assert run(zero_params, tmp_path / "fifo.png", tmp_path / "digit.png") == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"{tmp_path / 'digit.png'}: ")
    assert err == f"jaxlin: error: {tmp_path / 'fifo.png'}: not a regular file\n"
    assert run(tmp_path / "fifo.png", tmp_path / "digit.png") == 2
    assert capsys.readouterr().err == (f"jaxlin: error: {tmp_path / 'fifo.png'}: not a regular file (a params "
                                       f"file is an .npz written by `jaxlin train`)\n")


def test_params_for_images_no_file_can_become_are_refused_in_one_line(tmp_path, capsys):
    """Two channels (neither gray nor RGB), and a flat input of unknown shape: one line each, exit 2."""
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    two_channels = get_model("linear", image_shape=(8, 8, 2), num_classes=4)
    save_params(tmp_path / "two.npz", two_channels.init(jax.random.key(0)), two_channels, (8, 8, 2))
    flat = get_model("linear", input_size=50, num_classes=3)
    save_params(tmp_path / "flat.npz", flat.init(jax.random.key(0)), flat)
    for name, message in (("two.npz", "the params take images of 2 channels; predict makes image files into gray "
                                      "(1) or RGB (3) images only"),
                          ("flat.npz", "the params take 50 values per image and the file does not say their shape")):
        assert main(["predict", str(tmp_path / name), str(tmp_path / "digit.png")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_top_may_go_up_to_the_params_class_count(tmp_path, capsys):
    """A 20-class model shows up to 20 probabilities; 21 is refused in one line, before any image is read."""
    model = get_model("linear", num_classes=20, image_shape=(16, 16, 1))
    path = tmp_path / "params.npz"
    save_params(path, model.init(jax.random.PRNGKey(0)), model, (16, 16, 1))
    mark = tmp_path / "mark.png"
    pixels = np.zeros((16, 16), np.uint8)
    pixels[4:12, 6:10] = 255
    Image.fromarray(pixels).save(mark)
    assert main(["predict", str(path), str(mark), "--top", "15"]) == 0
    assert capsys.readouterr().out.count("%") == 15
    assert main(["predict", str(path), str(tmp_path / "missing.png"), "--top", "21"]) == 2
    assert capsys.readouterr().err.strip() == "jaxlin: error: --top must be in 1..20 (the params' 20 classes), got 21"
    assert main(["predict", str(path), str(mark), "--top", "0"]) == 2
    assert capsys.readouterr().err.strip() == "jaxlin: error: --top must be at least 1, got 0"


def test_the_top_classes_start_with_the_label_even_on_ties():
    """Equal probabilities: the label (argmax: the lowest tied class) comes first, then the others in order."""
    from jaxlin.runs.predict import Prediction

    tied = Prediction("x.png", label=0, probabilities=[0.1] * 10)
    assert [c for c, _ in tied.top(3)] == [0, 1, 2]
    mixed = Prediction("y.png", label=2, probabilities=[0.1, 0.2, 0.4, 0.2, 0.1])
    assert [c for c, _ in mixed.top(3)] == [2, 1, 3]
