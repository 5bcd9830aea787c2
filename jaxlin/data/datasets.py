"""MNIST-format data: a validating IDX reader, the tutorial's splits, and sources.

The arrays come from a directory of the original IDX files: the `--data-dir` flag,
else the ``JAXLIN_DATA_DIR`` environment variable, else jaxlin's download cache
(filled from public mirrors on first use, see `download`). tensorflow-datasets is
another source on request, imported lazily because it is an optional extra.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import stat
import zlib
from pathlib import Path

import numpy as np

from jaxlin.config import DATASETS, NUM_CLASSES
from jaxlin.data import download
from jaxlin.data.download import GZIP_MAGIC, IDX_FILES
from jaxlin.data.files import NotARegularFile, open_regular
from jaxlin.errors import JaxlinError

DATA_DIR_ENV = "JAXLIN_DATA_DIR"
IMAGE_SHAPE = (28, 28)
IMAGE_SIZE = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
# The old TensorFlow `input_data` took the first 5,000 training images for validation.
VALIDATION_SIZE = 5000

_IDX_UBYTE = 0x08


class DataError(JaxlinError, ValueError):
    """The data could not be found or is not valid MNIST-format data."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 images flattened to (n, 784) and int32 class ids (n,). Images in other forms
    (float in [0, 1], (n, 28, 28)) come in through `Split.from_arrays`, which checks and converts them."""

    images_uint8: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        # Everything downstream divides these by 255: float images in [0, 1] given here would be divided
        # a second time and train silently on near-black images.
        if not isinstance(self.images_uint8, np.ndarray) or self.images_uint8.dtype != np.uint8:
            kind = getattr(self.images_uint8, "dtype", type(self.images_uint8).__name__)
            raise DataError(f"Split images must be a uint8 array (0-255), got {kind}; give other images "
                            f"(float in [0, 1], say) to Split.from_arrays or Datasets.from_arrays, which convert them")

    @classmethod
    def from_arrays(cls, images, labels, where: str = "arrays") -> Split:
        """A split from images (n, 784) or (n, 28, 28): uint8 (or integers) in 0..255, or floats in [0, 1]
        (stored as uint8, rounded: MNIST's own floats come back exactly), and integer labels in
        0..9; anything else is one DataError naming `where`."""
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim == 3:
            images = images.reshape(len(images), -1)
        if images.ndim != 2 or images.shape[1] != IMAGE_SIZE:
            raise DataError(f"{where}: images are {images.shape}, expected (n, {IMAGE_SIZE}) or (n, 28, 28)")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{where}: {len(images)} images but labels of shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{where}: labels must be integer class ids, got {labels.dtype}")
        if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise DataError(f"{where}: labels must lie in 0..{NUM_CLASSES - 1}, got {int(labels.min())}.."
                            f"{int(labels.max())}")
        if np.issubdtype(images.dtype, np.floating):
            if images.size and not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
                raise DataError(f"{where}: float images must lie in [0, 1] (scale 0-255 images by 1/255, or give "
                                f"them as uint8)")
            images = np.rint(images.astype(np.float64) * 255).astype(np.uint8)
        elif np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
            if images.size and (images.min() < 0 or images.max() > 255):
                raise DataError(f"{where}: integer images must lie in 0..255, got {int(images.min())}.."
                                f"{int(images.max())}")
            images = images.astype(np.uint8)
        else:
            raise DataError(f"{where}: images must be numbers, got {images.dtype}")
        return cls(np.ascontiguousarray(images), labels.astype(np.int32))

    def __len__(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def images(self) -> np.ndarray:
        """float32 images in [0, 1], shape (n, 784); computed once."""
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

    @classmethod
    def from_arrays(cls, train_images, train_labels, test_images, test_labels,
                    validation_size: int = VALIDATION_SIZE, name: str = "arrays") -> Datasets:
        """Data sets from arrays (see `Split.from_arrays` for what images may be): the first
        `validation_size` training examples validate, as in the tutorial."""
        train = Split.from_arrays(train_images, train_labels, "training arrays")
        test = Split.from_arrays(test_images, test_labels, "test arrays")
        train, validation = split_train(train, validation_size)
        return cls(train, validation, test, name, "arrays")


# The largest body jaxlin reads from one IDX file (8 GiB; MNIST's largest is 47 MB): a header
# promising more is refused before anything is decompressed.
MAX_IDX_BYTES = 1 << 33
_BLOCK = 1 << 20
_MAX_DEFLATE_RATIO = 1032


def _read_up_to(stream, limit: int) -> bytes:
    """At most `limit` bytes of `stream`, read in blocks: a gzip bomb expands no further."""
    chunks, size = [], 0
    while size < limit:
        block = stream.read(min(_BLOCK, limit - size))
        if not block:
            break
        chunks.append(block)
        size += len(block)
    return b"".join(chunks)


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None,
             item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (gzip-compressed or not), validated.

    The header is a big-endian magic number (0, 0, type, ndim) followed by ndim
    uint32 dimensions; the payload must hold exactly the product of them. The header
    is checked (sizes in Python integers, against `expected_ndim` and `item_shape`)
    before the body is read, and no more than the promised bytes + 1 are ever
    decompressed.
    """
    path = Path(path)
    try:
        with open_regular(path) as raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if compressed else raw
            # What the file can hold at most: deflate expands at most ~1032:1.
            capacity = os.fstat(raw.fileno()).st_size * (_MAX_DEFLATE_RATIO if compressed else 1)
            return _read_idx_stream(path, stream, expected_ndim, item_shape, capacity)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: corrupt or truncated gzip data ({err})") from err
    except MemoryError as err:
        raise DataError(f"{path}: not enough memory to read it") from err
    except (NotARegularFile, IsADirectoryError) as err:
        raise DataError(f"{path}: not a regular file") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err


def _read_idx_stream(path: Path, stream, expected_ndim, item_shape, capacity: int) -> np.ndarray:
    magic = _read_up_to(stream, 4)
    if len(magic) < 4:
        raise DataError(f"{path}: file too short for an IDX header ({len(magic)} bytes)")
    zero0, zero1, type_code, ndim = magic
    if zero0 or zero1 or type_code != _IDX_UBYTE or ndim == 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic.hex()} "
            f"(expected 0x000008NN: unsigned bytes with NN dimensions)"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"{path}: has {ndim} dimensions, expected {expected_ndim}")
    dims = _read_up_to(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(dims[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
    if item_shape is not None and shape[1:] != tuple(item_shape):
        raise DataError(f"{path}: items are {shape[1:]}, expected {tuple(item_shape)}")
    expected = math.prod(shape)  # a Python integer: cannot wrap around
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{path}: header {shape} promises {expected} bytes, more than the {MAX_IDX_BYTES} "
                        f"jaxlin reads from one file")
    if expected > capacity:
        raise DataError(f"{path}: truncated: header {shape} promises {expected} bytes of data, more than a "
                        f"file of its size can hold")
    body = bytearray(expected + 1)  # one buffer: the peak is what the header promises
    view, size = memoryview(body), 0
    while size <= expected:
        count = stream.readinto(view[size:size + _BLOCK])
        if not count:
            break
        size += count
    if size != expected:
        problem = "truncated" if size < expected else "has trailing bytes"
        held = f"file holds {size}" if size < expected else "file holds more"
        raise DataError(f"{path}: {problem}: header {shape} promises {expected} bytes of data, {held}")
    return np.frombuffer(body, np.uint8, count=expected).reshape(shape)


def _find_idx_file(data_dir: Path, stem: str) -> Path:
    """The file holding `stem` (gzip-compressed or not); one that cannot be looked at is named with the
    reason, and so is one that is there but not a regular file (a directory, a FIFO)."""
    irregular = None
    for name in (stem + ".gz", stem):
        path = data_dir / name
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:  # e.g. a data directory without read or search permission
            raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err
        if stat.S_ISREG(mode):
            return path
        irregular = irregular or path
    if irregular is not None:
        raise DataError(f"{irregular}: not a regular file")
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
    try:
        if not data_dir.is_dir():
            problem = "is not a directory" if data_dir.exists() else "does not exist"
            raise DataError(f"data directory {data_dir} {problem}")
    except OSError as err:  # a parent directory without search permission
        raise DataError(f"data directory {data_dir}: cannot read it ({err.strerror or err})") from err
    arrays = {}
    for key, stem in IDX_FILES.items():
        images = "images" in key
        arrays[key] = read_idx(_find_idx_file(data_dir, stem), 3 if images else 1, IMAGE_SHAPE if images else ())
    train = _check_pair(arrays["train_images"], arrays["train_labels"], f"{data_dir} (train)")
    test = _check_pair(arrays["test_images"], arrays["test_labels"], f"{data_dir} (t10k)")
    if not len(test):
        raise DataError(f"{data_dir} (t10k): the test split holds no images")
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
    try:
        return load_idx_dir(cached, name)
    except DataError as err:
        raise DataError(f"{err} (in jaxlin's cache: `jaxlin download --dataset {name}` replaces a file "
                        f"that does not verify)") from err
