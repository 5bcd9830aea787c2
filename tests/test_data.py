"""The IDX reader, the tutorial's splits and the data sources."""

import gzip
import re
import sys

import numpy as np
import pytest

from helpers import idx_bytes, write_dataset, write_idx
from jaxlin.data.datasets import (DATA_DIR_ENV, DataError, Split, load_datasets, load_idx_dir, load_tfds,
                         read_idx, split_train)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a", array, compress)
    np.testing.assert_array_equal(read_idx(path, expected_ndim=3), array)


@pytest.mark.parametrize("header, problem", [
    (b"\x00\x00\x09\x01", "bad IDX magic"),      # signed bytes, not unsigned
    (b"\x01\x00\x08\x01", "bad IDX magic"),
    (b"\x00\x00\x08\x00", "bad IDX magic"),      # zero dimensions
    (b"\x00\x00", "too short"),
])
def test_read_idx_rejects_bad_headers(tmp_path, header, problem):
    path = tmp_path / "bad"
    path.write_bytes(header)
    with pytest.raises(DataError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_truncated_payload(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(DataError, match="truncated.*3136 bytes.*3126"):
        read_idx(path)


def test_read_idx_rejects_trailing_bytes(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(idx_bytes(np.zeros((4,), np.uint8)) + b"xx")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path)


def test_read_idx_rejects_truncated_header(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x04")
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(path)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    path = tmp_path / "c.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((100,), np.uint8)))[:-12])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_read_idx_checks_dimensions(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros((5,), np.uint8))
    with pytest.raises(DataError, match="has 1 dimensions, expected 3"):
        read_idx(path, expected_ndim=3)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")


def test_load_idx_dir_reads_gzip_and_raw(tmp_path):
    gz = load_idx_dir(write_dataset(tmp_path / "gz", 5100, 20))
    raw = load_idx_dir(write_dataset(tmp_path / "raw", 5100, 20, compress=False))
    for a, b in ((gz.train, raw.train), (gz.validation, raw.validation), (gz.test, raw.test)):
        np.testing.assert_array_equal(a.images_uint8, b.images_uint8)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert (len(gz.train), len(gz.validation), len(gz.test)) == (100, 5000, 20)
    assert gz.train.images_uint8.shape == (100, 784) and gz.train.images_uint8.dtype == np.uint8


def test_load_idx_dir_missing_file(tmp_path):
    directory = write_dataset(tmp_path / "d", 5100, 20)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_idx_dir(directory)


def test_load_idx_dir_missing_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_idx_dir(tmp_path / "nowhere")


def test_the_class_count_is_read_from_the_labels(tmp_path):
    """1 + the largest label of either split: a test label 10 makes 11 classes (the name does not decide)."""
    directory = write_dataset(tmp_path / "d", 5100, 20)
    assert load_idx_dir(directory).num_classes == 10
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.full((20,), 10, np.uint8))
    data = load_idx_dir(directory)
    assert data.num_classes == 11 and data.image_shape == (28, 28, 1)
    with pytest.raises(DataError, match="label 10 out of range 0..9"):
        type(data)(data.train, data.validation, data.test, num_classes=10)


def test_load_idx_dir_count_mismatch(tmp_path):
    directory = write_dataset(tmp_path / "d", 5100, 20)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.zeros((19,), np.uint8))
    with pytest.raises(DataError, match="20 images but 19 labels"):
        load_idx_dir(directory)


def test_load_idx_dir_wrong_image_size(tmp_path):
    directory = write_dataset(tmp_path / "d", 5100, 20)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", np.zeros((20, 14, 14), np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: items are \(14, 14\)"):
        load_idx_dir(directory)


def test_split_views():
    split = Split(np.array([[0, 255, 51]], np.uint8), np.array([3], np.int32))
    np.testing.assert_array_equal(split.images, np.array([[0.0, 1.0, 0.2]], np.float32))
    assert split.images.dtype == np.float32
    np.testing.assert_array_equal(split.one_hot_labels, np.eye(10, dtype=np.float32)[[3]])


def test_split_train_takes_first_examples_for_validation():
    train = Split(np.arange(10, dtype=np.uint8)[:, None], np.arange(10, dtype=np.int32))
    rest, validation = split_train(train, 3)
    assert validation.labels.tolist() == [0, 1, 2] and rest.labels.tolist() == list(range(3, 10))
    with pytest.raises(DataError, match="does not fit"):
        split_train(train, 10)


def test_environment_setting_is_used(tiny_data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tiny_data_dir))
    assert load_datasets("mnist").source == str(tiny_data_dir)


def test_a_data_set_jaxlin_cannot_fetch_needs_a_directory(tiny_data_dir, monkeypatch):
    """Any name with a directory (it only names the data); without one, only what jaxlin can fetch."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match=r"jaxlin cannot fetch a data set called 'kmnist' .*pass --data-dir DIR"):
        load_datasets("kmnist")
    data = load_datasets("kmnist", tiny_data_dir)
    assert data.name == "kmnist" and data.num_classes == 10 and data.image_shape == (28, 28, 1)


def test_tfds_source_without_tfds_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(DataError) as info:
        load_datasets("mnist", source="tfds")
    message = str(info.value)
    assert "tensorflow-datasets is not installed" in message
    assert "--data-dir" in message and DATA_DIR_ENV in message and "jaxlin download" in message


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5010):
        data = load_tfds("mnist")
    assert (len(data.train), len(data.validation), len(data.test)) == (10, 5000, 5010)
    assert data.train.images_uint8.shape == (10, 784) and data.train.images_uint8.dtype == np.uint8
    assert data.test.labels.dtype == np.int32 and data.test.labels.max() <= 9


def test_tfds_failure_is_a_clear_error(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(DataError, match="(?s)tensorflow-datasets failed: no network.*--data-dir"):
        load_tfds("fashion_mnist")


# The real files: facts published with them (../shared/data/mnist/README.md).

def test_real_mnist_shapes_and_split(mnist):
    assert mnist.train.images_uint8.shape == (55000, 784)
    assert mnist.validation.images_uint8.shape == (5000, 784)
    assert mnist.test.images_uint8.shape == (10000, 784)
    assert mnist.test.one_hot_labels.shape == (10000, 10)
    assert mnist.test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert mnist.image_shape == (28, 28, 1) and mnist.num_features == 784 and mnist.num_classes == 10
    # The validation set is the first 5,000 training images.
    assert mnist.validation.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_real_mnist_statistics(mnist):
    labels = np.concatenate([mnist.validation.labels, mnist.train.labels])
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    pixels = np.concatenate([mnist.validation.images_uint8, mnist.train.images_uint8])
    assert pixels.mean() == pytest.approx(33.318, abs=5e-4)
    assert (mnist.test.labels == 0).sum() == 980  # why the untrained model scores 9.8%
    images = mnist.test.images
    assert images.dtype == np.float32 and images.min() == 0.0 and images.max() == 1.0


def test_a_header_whose_sizes_overflow_64_bits_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([2**32 - 1] * 3, ">u4").tobytes() + b"\0" * 100)
    with pytest.raises(DataError, match=r"promises 79228162458924105385300197375 bytes, more than"):
        read_idx(path)


def test_a_gzip_bomb_is_cut_off_after_the_promised_bytes(tmp_path):
    import gzip
    import tracemalloc

    path = tmp_path / "bomb.gz"
    header = bytes([0, 0, 8, 3]) + np.array([10, 28, 28], ">u4").tobytes()
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(header)
        for _ in range(200):
            handle.write(bytes(1 << 20))  # 200 MB of zeros, about 200 KB compressed
    tracemalloc.start()
    with pytest.raises(DataError, match=r"has trailing bytes: header \(10, 28, 28\) promises 7840 bytes"):
        read_idx(path, 3, (28, 28))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * (1 << 20)


def test_images_of_the_wrong_size_are_refused_from_the_header(tmp_path):
    path = write_idx(tmp_path / "small", np.zeros((5, 14, 14), np.uint8))
    with pytest.raises(DataError, match=r"items are \(14, 14\), expected \(28, 28\)"):
        read_idx(path, 3, (28, 28))


def test_an_empty_test_split_is_refused(tmp_path):
    directory = write_dataset(tmp_path / "data", 5100, 0)
    with pytest.raises(DataError, match=r"\(t10k\): the test split holds no images"):
        load_idx_dir(directory)


def test_a_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="data directory .*file is not a directory"):
        load_idx_dir(tmp_path / "file")


def test_float_images_are_computed_once(tiny_data):
    assert tiny_data.train.images is tiny_data.train.images


def test_a_header_promising_more_than_the_file_can_hold_is_refused_before_reading(tmp_path):
    raw = tmp_path / "raw"
    raw.write_bytes(bytes([0, 0, 8, 3]) + np.array([100_000, 28, 28], ">u4").tobytes() + bytes(1000))
    with pytest.raises(DataError, match="more than a file of its size can hold"):
        read_idx(raw)
    packed = tmp_path / "packed.gz"
    packed.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + np.array([10_000_000, 28, 28], ">u4").tobytes()))
    with pytest.raises(DataError, match="more than a file of its size can hold"):
        read_idx(packed)


def test_a_fifo_or_a_directory_in_place_of_a_data_file_is_named(tmp_path):
    import os
    import threading

    directory = write_dataset(tmp_path / "d", 5100, 20)
    labels = directory / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    os.mkfifo(labels)
    outcome = []

    def load():
        try:
            load_idx_dir(directory)
        except DataError as err:
            outcome.append(str(err))

    # In a thread: should the FIFO ever be opened for reading, it would wait for a writer forever.
    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(120)
    assert outcome == [f"{labels}: not a regular file"]
    with pytest.raises(DataError, match="not a regular file"):
        read_idx(labels)
    labels.unlink()
    labels.mkdir()
    with pytest.raises(DataError, match=f"{labels}: not a regular file"):
        load_idx_dir(directory)


def _as_another_user() -> list[str]:
    """The command prefix that drops root (whom permissions do not stop) for `nobody`; none when not root."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot test a permission error")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def shared_tmp():
    """A directory another user can enter (pytest's tmp_path is private to root)."""
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="jaxlin-perm-"))
    base.chmod(0o755)
    yield base
    for path in base.rglob("*"):
        path.chmod(0o755)
    shutil.rmtree(base)


def test_an_unreadable_data_dir_or_file_is_cannot_read_naming_the_file(shared_tmp):
    """chmod 000 on the data directory, then on its files: `jaxlin evaluate` run as a user who cannot read
    them says which file and why, in one line, exit 2 (not "cannot write outputs")."""
    import os
    import subprocess

    import jax

    from jaxlin.runs.params_file import save_params
    from jaxlin.models import get_model

    prefix = _as_another_user()
    model = get_model("linear")
    save_params(shared_tmp / "p.npz", model.init(jax.random.key(0)), model)
    (shared_tmp / "p.npz").chmod(0o644)
    closed = write_dataset(shared_tmp / "closed", 5100, 20)
    closed.chmod(0o000)
    files = write_dataset(shared_tmp / "files", 5100, 20)
    for path in files.iterdir():
        path.chmod(0o000)
    env = {**os.environ, "HOME": str(shared_tmp), "JAXLIN_MIRRORS": "http://127.0.0.1:9/",
           "JAXLIN_CACHE_DIR": str(shared_tmp / "cache")}
    for directory in (closed, files):
        run = subprocess.run([*prefix, sys.executable, "-m", "jaxlin.cli", "evaluate", str(shared_tmp / "p.npz"),
                              "--data-dir", str(directory)], env=env, cwd=shared_tmp, capture_output=True,
                             text=True, timeout=300, check=False)
        assert run.returncode == 2, run.stderr
        assert run.stderr == (f"jaxlin: error: {directory / 'train-images-idx3-ubyte.gz'}: cannot read file "
                              f"(Permission denied)\n")


def test_arrays_from_python_are_checked_and_float_images_are_not_divided_twice(tiny_data):
    """Float images in [0, 1] (what many loaders give) train exactly as their uint8 originals; a Split
    given them directly is refused instead of being divided by 255 a second time."""
    from jaxlin.config import Config
    from jaxlin.data.datasets import Datasets, Split
    from jaxlin.models import get_model
    from jaxlin.training.trainer import fit

    train = np.concatenate([tiny_data.validation.images_uint8, tiny_data.train.images_uint8])
    labels = np.concatenate([tiny_data.validation.labels, tiny_data.train.labels])
    as_floats = Datasets.from_arrays(train / 255.0, labels, tiny_data.test.images / 1.0, tiny_data.test.labels)
    as_uint8 = Datasets.from_arrays(train.reshape(-1, 28, 28), labels, tiny_data.test.images_uint8,
                                    tiny_data.test.labels)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(as_floats, split).images_uint8, getattr(tiny_data, split).images_uint8)
    config = Config(num_steps=30, eval_every=10, batch_size=50)
    results = [fit(config, data, get_model("linear"), progress=False) for data in (as_floats, as_uint8)]
    assert results[0].final["accuracy"] == results[1].final["accuracy"] > 0.5
    with pytest.raises(DataError, match="must be a uint8 array"):
        Split(tiny_data.test.images, tiny_data.test.labels)
    bad = [((train / 255.0) * 2, labels, "float images must lie in"),
           (np.where(train > 0, np.nan, 0.0), labels, "float images hold NaN or infinite values"),
           (train.astype(np.int64) * 2, labels, "integer images must lie in 0..255"),
           (train, labels + 1, "labels must lie in 0..9"),
           (train[:, :700], labels, "which is not image_shape (28, 28, 1) per image"),
           (train, labels[:-1], "images but labels"),
           (train, labels.astype(np.float32), "integer class ids")]
    for images, wrong_labels, message in bad:
        with pytest.raises(DataError, match=re.escape(message)):
            Datasets.from_arrays(images, wrong_labels, tiny_data.test.images_uint8, tiny_data.test.labels,
                                 image_shape=(28, 28), num_classes=10)
    # A boolean mask is a picture: True is a lit pixel (255), not the near-black 1 of 0..255.
    masks = Datasets.from_arrays(train > 127, labels, tiny_data.test.images_uint8 > 127, tiny_data.test.labels)
    assert set(np.unique(masks.train.images_uint8)) == {0, 255}
    with pytest.raises(DataError, match="validation size 5600 does not fit 5600 examples"):
        Datasets.from_arrays(train, labels, tiny_data.test.images_uint8, tiny_data.test.labels, validation_size=5600)


def test_the_extending_page_states_the_current_rules_for_arrays():
    """docs/extending.md once said images are (n, 784) or (n, 28, 28) with labels 0..9, and listed as
    "not yet" what issue 16 added; it points at data.md's rules now."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "extending.md").read_text()
    assert "`(n, 784)` or `(n, 28, 28)`" not in text and "labels in 0..9" not in text
    assert "`(n, H, W)`, `(n, H, W, C)` or flat `(n, features)`" in text and "num_classes=K" in text
    assert "issue 16" not in text and "--validation-size" not in text.split("Not yet")[-1]
