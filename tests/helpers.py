"""Helpers the tests share: writing IDX files and small synthetic MNIST-format data sets.

Import them from here (`from helpers import write_dataset`); conftest.py holds only fixtures.
"""

import gzip
from pathlib import Path

import numpy as np

from jaxlin.data.download import IDX_FILES


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
