"""MNIST-format data: a validating IDX reader, the tutorial's splits, and sources.

The arrays come from a directory of the original IDX files: the `--data-dir` flag,
else the ``JAXLIN_DATA_DIR`` environment variable, else jaxlin's download cache
(filled from public mirrors on first use, see `download`). tensorflow-datasets is
another source on request, imported lazily because it is an optional extra.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from jaxlin.config import DATASETS, NUM_CLASSES

DATA_DIR_ENV = "JAXLIN_DATA_DIR"
IMAGE_SHAPE = (28, 28)
IMAGE_SIZE = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
# The old TensorFlow `input_data` took the first 5,000 training images for validation.
VALIDATION_SIZE = 5000

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """The data could not be found or is not valid MNIST-format data."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 images flattened to (n, 784) and int32 class ids (n,)."""

    images_uint8: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> np.ndarray:
        """float32 images in [0, 1], shape (n, 784)."""
        return self.images_uint8.astype(np.float32) / 255.0

    @property
    def one_hot_labels(self) -> np.ndarray:
        """float32 one-hot labels, shape (n, 10)."""
        return np.eye(NUM_CLASSES, dtype=np.float32)[self.labels]


@dataclasses.dataclass(frozen=True)
class Datasets:
    train: Split
    validation: Split
    test: Split
    name: str = "mnist"
    source: str = ""


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: corrupt or truncated gzip data ({err})") from err


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (gzip-compressed or not), validated.

    The header is a big-endian magic number (0, 0, type, ndim) followed by ndim
    uint32 dimensions; the payload must hold exactly the product of them.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: file too short for an IDX header ({len(data)} bytes)")
    zero0, zero1, type_code, ndim = data[:4]
    if zero0 or zero1 or type_code != _IDX_UBYTE or ndim == 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} "
            f"(expected 0x000008NN: unsigned bytes with NN dimensions)"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"{path}: has {ndim} dimensions, expected {expected_ndim}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_size
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: header {shape} promises {expected} bytes of data, "
            f"file holds {actual}"
        )
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def _find_idx_file(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"{data_dir}: missing {stem}.gz (or uncompressed {stem})")


def _check_pair(images: np.ndarray, labels: np.ndarray, where: str) -> Split:
    if images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{where}: images are {images.shape[1:]}, expected {IMAGE_SHAPE}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise DataError(f"{where}: label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}")
    return Split(images.reshape(len(images), IMAGE_SIZE), labels.astype(np.int32))


def split_train(train: Split, validation_size: int = VALIDATION_SIZE) -> tuple[Split, Split]:
    """The tutorial's split: the first `validation_size` examples validate."""
    if not 0 <= validation_size < len(train):
        raise DataError(f"validation size {validation_size} does not fit {len(train)} examples")
    return (
        Split(train.images_uint8[validation_size:], train.labels[validation_size:]),
        Split(train.images_uint8[:validation_size], train.labels[:validation_size]),
    )


def load_idx_dir(data_dir: str | os.PathLike, name: str = "mnist") -> Datasets:
    """Reads the four IDX files of an MNIST-format data set from a directory."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        problem = "is not a directory" if data_dir.exists() else "does not exist"
        raise DataError(f"data directory {data_dir} {problem}")
    arrays = {}
    for key, stem in IDX_FILES.items():
        arrays[key] = read_idx(_find_idx_file(data_dir, stem), 3 if "images" in key else 1)
    train = _check_pair(arrays["train_images"], arrays["train_labels"], f"{data_dir} (train)")
    test = _check_pair(arrays["test_images"], arrays["test_labels"], f"{data_dir} (t10k)")
    train, validation = split_train(train)
    return Datasets(train, validation, test, name=name, source=str(data_dir))


def _tfds_split(tfds, name: str, split: str, tfds_dir) -> Split:
    dataset = tfds.load(name, split=split, as_supervised=True, data_dir=tfds_dir)
    # Iterating in batches, not `batch_size=-1`, which aborts under mock_data (tfds 4.9.10).
    images, labels = [], []
    for batch_images, batch_labels in tfds.as_numpy(dataset.batch(10_000)):
        images.append(batch_images)
        labels.append(batch_labels)
    images = np.concatenate(images)[..., 0]
    return _check_pair(images.astype(np.uint8), np.concatenate(labels), f"tfds {name}/{split}")


def load_tfds(name: str = "mnist", tfds_dir: str | None = None) -> Datasets:
    """Loads through tensorflow-datasets (downloads on first use; needs TensorFlow)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(_no_data_message(name, f"tensorflow-datasets is not installed ({err})")) from err
    try:
        train = _tfds_split(tfds, name, "train", tfds_dir)
        test = _tfds_split(tfds, name, "test", tfds_dir)
    except DataError:
        raise
    except Exception as err:  # tfds raises many types for network and build failures
        raise DataError(_no_data_message(name, f"tensorflow-datasets failed: {err}")) from err
    train, validation = split_train(train)
    return Datasets(train, validation, test, name=name, source="tensorflow-datasets")


def _no_data_message(name: str, reason: str) -> str:
    return (
        f"no {name} data available: {reason}. Point jaxlin at a directory holding the four IDX files "
        f"({', '.join(s + '.gz' for s in IDX_FILES.values())}) with --data-dir DIR or {DATA_DIR_ENV}=DIR, "
        f"or fetch them ahead with `jaxlin download --dataset {name}` where there is a network"
    )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
    """The explicit directory, else the environment setting, else None."""
    if data_dir:
        return str(data_dir)
    return os.environ.get(DATA_DIR_ENV) or None


def load_datasets(name: str = "mnist", data_dir: str | os.PathLike | None = None, source: str = "auto",
                  progress: bool = True, log=None) -> Datasets:
    """Loads `name` from the first of: `data_dir`, $JAXLIN_DATA_DIR, the download cache, a download
    from the mirrors (see `download`); or through tensorflow-datasets when `source` is "tfds"."""
    from jaxlin import download

    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    directory = resolve_data_dir(data_dir)
    if directory is not None:
        return load_idx_dir(directory, name)
    if source == "tfds":
        return load_tfds(name)
    cached = download.cached_files(name)
    if cached is None:
        try:
            cached = download.download(name, progress=progress, log=log or (lambda line: None))
        except download.DownloadError as err:
            raise DataError(_no_data_message(name, str(err))) from err
    return load_idx_dir(cached, name)
