"""Shared fixtures: small synthetic IDX data sets, and the real MNIST files when configured.

Tests that need the real data read the directory named by JAXLIN_DATA_DIR. When
that setting is given, missing files are a failure, not a skip: a CI run that
lost its data must not pass quietly.
"""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from jaxlin.data.datasets import DATA_DIR_ENV, IDX_FILES
from jaxlin.data.download import CACHE_ENV, MIRRORS_ENV

# Port 9 (discard) on the loopback: nothing listens, so a connection is refused at once.
CLOSED_LOOPBACK_MIRROR = "http://127.0.0.1:9/"


@pytest.fixture(autouse=True)
def no_public_mirrors(monkeypatch, tmp_path_factory):
    """No test may reach the built-in public mirrors, nor read or fill the user's cache: every test
    sees a closed loopback mirror and an empty cache of its own unless it sets others."""
    monkeypatch.setenv(MIRRORS_ENV, CLOSED_LOOPBACK_MIRROR)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def synthetic_split(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: class c lights up rows 2c..2c+3, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num).astype(np.uint8)
    images = rng.integers(0, 60, (num, 28, 28)).astype(np.uint8)
    for c in range(10):
        images[labels == c, 2 * c + 2:2 * c + 6, 4:24] = 255
    return images, labels


def write_dataset(directory: Path, num_train: int = 5600, num_test: int = 1003, compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    train_images, train_labels = synthetic_split(num_train, 0)
    test_images, test_labels = synthetic_split(num_test, 1)
    for key, array in (("train_images", train_images), ("train_labels", train_labels),
                       ("test_images", test_images), ("test_labels", test_labels)):
        write_idx(directory / (IDX_FILES[key] + suffix), array, compress)
    return directory


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """5,600 training images (600 after the 5,000 validation images), 1,003 test images."""
    return write_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_data(tiny_data_dir):
    from jaxlin.data.datasets import load_idx_dir

    return load_idx_dir(tiny_data_dir)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    setting = os.environ.get(DATA_DIR_ENV)
    if not setting:
        pytest.skip(f"{DATA_DIR_ENV} is not set: tests on the real MNIST files are skipped")
    directory = Path(setting)
    missing = [n for n in IDX_FILES.values()
               if not (directory / (n + ".gz")).is_file() and not (directory / n).is_file()]
    if missing:
        pytest.fail(f"{DATA_DIR_ENV}={setting} is set but lacks {', '.join(missing)}")
    return directory


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from jaxlin.data.datasets import load_idx_dir

    return load_idx_dir(mnist_dir)
