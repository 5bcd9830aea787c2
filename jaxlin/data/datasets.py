"""Image classification data: the tutorial's splits, the checks on arrays, and the sources.

The arrays come from a directory of IDX files (MNIST's four file names, gzip-compressed or not;
KMNIST, EMNIST-style and other sets in the same format): the `--data-dir` flag, else the
``JAXLIN_DATA_DIR`` environment variable, else jaxlin's download cache (filled from public mirrors
on first use for the sets jaxlin knows, see `download`). tensorflow-datasets is another source on
request, imported lazily because it is an optional extra. The image shape (H, W, C) and the class
count come from the data, never from the name: `Datasets` carries them to the model, evaluation,
figures and params file. Reading the files themselves is `idx`'s job.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np

from jaxlin.config import DATASETS, NUM_CLASSES
from jaxlin.data import download
from jaxlin.data.download import IDX_FILES
from jaxlin.data.idx import (MAX_IDX_BYTES, DataError, _find_idx_file, _read_up_to,  # noqa: F401 (re-exported)
                             content_sha256, find_idx_files, read_idx, read_idx_files)

DATA_DIR_ENV = "JAXLIN_DATA_DIR"
# MNIST's images; other data sets bring their own shape (`Datasets.image_shape`).
IMAGE_SHAPE = (28, 28)
IMAGE_SIZE = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
MNIST_IMAGE_SHAPE = (*IMAGE_SHAPE, 1)
# The old TensorFlow `input_data` took the first 5,000 training images for validation.
VALIDATION_SIZE = 5000
MIN_CLASSES = 2  # a classifier needs two classes, even when one split shows only one


def default_image_shape(features: int) -> tuple[int, int, int]:
    """The (H, W, C) that flat images of `features` values are taken to have when nobody says: MNIST's
    28x28 for 784, a square gray image, a square RGB image, else one row of pixels."""
    side = math.isqrt(features)
    if side * side == features:
        return side, side, 1
    side = math.isqrt(features // 3)
    if features % 3 == 0 and side * side * 3 == features:
        return side, side, 3
    return 1, features, 1


def image_shape_of(images: np.ndarray, image_shape=None, where: str = "arrays") -> tuple[int, int, int]:
    """(H, W, C) of images (n, H, W), (n, H, W, C) or flat (n, features) (then `image_shape`, else
    `default_image_shape`); a given `image_shape` must agree with the array. DataError otherwise."""
    if images.ndim == 3:
        found = (*images.shape[1:], 1)
    elif images.ndim == 4:
        found = images.shape[1:]
    elif images.ndim == 2:
        found = None
    else:
        raise DataError(f"{where}: images are {images.shape}, expected (n, H, W), (n, H, W, C) or (n, features)")
    if image_shape is not None:
        shape = tuple(int(d) for d in image_shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or min(shape) < 1:
            raise DataError(f"{where}: image_shape must be (H, W) or (H, W, C) of sizes >= 1, got {image_shape}")
        features = images.shape[1] if images.ndim == 2 else math.prod(found)
        if math.prod(shape) != features or (found is not None and found != shape):
            raise DataError(f"{where}: images are {images.shape}, which is not image_shape {shape} per image")
        return shape
    shape = tuple(int(d) for d in found) if found is not None else default_image_shape(int(images.shape[1]))
    if min(shape) < 1:
        raise DataError(f"{where}: images are {images.shape}; an image needs at least one pixel")
    return shape


def class_count(*label_arrays: np.ndarray) -> int:
    """1 + the largest label over all splits, at least `MIN_CLASSES`."""
    largest = max((int(labels.max()) for labels in label_arrays if len(labels)), default=0)
    return max(largest + 1, MIN_CLASSES)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 images flattened to (n, H*W*C) and int32 class ids (n,). Images in other forms
    (float in [0, 1], (n, H, W[, C])) come in through `Split.from_arrays`, which checks and converts them."""

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
    def from_arrays(cls, images, labels, where: str = "arrays", image_shape=None,
                    num_classes: int | None = None) -> Split:
        """A split from images (n, H, W), (n, H, W, C) or (n, features) (checked against `image_shape`
        when given): uint8 (or integers) in 0..255, or floats in [0, 1] (stored as uint8, rounded:
        MNIST's own floats come back exactly), and integer labels in 0..num_classes-1 (default: any
        label >= 0); anything else is one DataError naming `where`."""
        images, labels = np.asarray(images), np.asarray(labels)
        shape = image_shape_of(images, image_shape, where)
        images = images.reshape(len(images), math.prod(shape))
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{where}: {len(images)} images but labels of shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{where}: labels must be integer class ids, got {labels.dtype}")
        top = "" if num_classes is None else f"{num_classes - 1}"
        if len(labels) and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
            raise DataError(f"{where}: labels must lie in 0..{top}, got {int(labels.min())}..{int(labels.max())}")
        if np.issubdtype(images.dtype, np.floating):
            if images.size and not np.isfinite(images).all():
                raise DataError(f"{where}: float images hold NaN or infinite values; they must lie in [0, 1]")
            if images.size and not (images.min() >= 0 and images.max() <= 1):
                raise DataError(f"{where}: float images must lie in [0, 1] (scale 0-255 images by 1/255, or give "
                                f"them as uint8)")
            images = np.rint(images.astype(np.float64) * 255).astype(np.uint8)
        elif images.dtype == np.bool_:  # a mask: True is a lit pixel (255), not the near-black 1 of 0..255
            images = images.astype(np.uint8) * np.uint8(255)
        elif np.issubdtype(images.dtype, np.integer):
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
        """float32 images in [0, 1], shape (n, features); computed once."""
        return self.images_uint8.astype(np.float32) / 255.0

    def one_hot(self, num_classes: int) -> np.ndarray:
        """float32 one-hot labels, shape (n, num_classes)."""
        return np.eye(num_classes, dtype=np.float32)[self.labels]

    @property
    def one_hot_labels(self) -> np.ndarray:
        """float32 one-hot labels over 1 + the largest label (MNIST's 10 at least); a data set's own
        count is `Datasets.one_hot_labels(split)`."""
        return self.one_hot(max(NUM_CLASSES, class_count(self.labels)))


@dataclasses.dataclass(frozen=True)
class Datasets:
    """The tutorial's three splits and what the data is: `image_shape` (H, W, C) and `num_classes`
    (when not given: the images' `default_image_shape` and 1 + the largest label of any split)."""

    train: Split
    validation: Split
    test: Split
    name: str = "mnist"
    source: str = ""
    image_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None

    def __post_init__(self):
        features = self.train.images_uint8.shape[1]
        shape = self.image_shape or default_image_shape(features)
        object.__setattr__(self, "image_shape", tuple(int(d) for d in shape))
        if self.num_classes is None:
            object.__setattr__(self, "num_classes", class_count(*(s.labels for s in self.splits())))
        if not len(self.test):  # every run measures test accuracy (`fit` would fail on it later)
            raise DataError(f"{self.name}: the test split holds no images (every run measures test accuracy on it)")
        for split_name, split in zip(("train", "validation", "test"), self.splits()):
            if split.images_uint8.ndim != 2 or split.images_uint8.shape[1] != self.num_features:
                raise DataError(f"{self.name} ({split_name}): images are {split.images_uint8.shape}, expected "
                                f"(n, {self.num_features}) for images of shape {self.image_shape}")
            if len(split) and split.labels.max() >= self.num_classes:
                raise DataError(f"{self.name} ({split_name}): label {int(split.labels.max())} out of range "
                                f"0..{self.num_classes - 1}")

    def splits(self) -> tuple[Split, Split, Split]:
        return self.train, self.validation, self.test

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over the image shape and every split's uint8 images and labels (computed once; about
        0.04 s for MNIST): a checkpoint records it, so that a run resumes only on the data it trained on."""
        digest = hashlib.sha256(repr((self.image_shape, self.num_classes)).encode())
        for split in self.splits():
            digest.update(f"{split.images_uint8.shape}".encode())
            # Flat byte views (not memoryview.cast, which refuses an empty split's zero-length shape).
            digest.update(np.ascontiguousarray(split.images_uint8).reshape(-1).view(np.uint8))
            digest.update(np.ascontiguousarray(split.labels, dtype="<i4").reshape(-1).view(np.uint8))
        return digest.hexdigest()

    @property
    def num_features(self) -> int:
        """Values per image: H * W * C."""
        return math.prod(self.image_shape)

    def summary(self) -> dict:
        """What a run's records say of its data."""
        return {"name": self.name, "source": self.source, "image_shape": list(self.image_shape),
                "num_classes": self.num_classes, "train": len(self.train), "validation": len(self.validation),
                "test": len(self.test)}

    def describe(self) -> str:
        """One line for a run's log, e.g. "mnist from DIR: 28x28x1 images, 10 classes; train 55000, ..."."""
        shape = "x".join(str(d) for d in self.image_shape)
        return (f"{self.name} from {self.source}: {shape} images, {self.num_classes} classes; train {len(self.train)}, "
                f"validation {len(self.validation)}, test {len(self.test)}")

    def one_hot_labels(self, split: Split) -> np.ndarray:
        """`split`'s labels one-hot over this data set's classes, (n, num_classes)."""
        return split.one_hot(self.num_classes)

    @classmethod
    def from_arrays(cls, train_images, train_labels, test_images, test_labels,
                    validation_size: int = VALIDATION_SIZE, name: str = "arrays", image_shape=None,
                    num_classes: int | None = None) -> Datasets:
        """Data sets from arrays (see `Split.from_arrays` for what images may be): the first
        `validation_size` training examples validate, as in the tutorial. `image_shape` (H, W[, C])
        defaults to the arrays' own ((n, H, W[, C]) images) or `default_image_shape`; `num_classes` to
        1 + the largest label."""
        shape = image_shape_of(np.asarray(train_images), image_shape, "training arrays")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < MIN_CLASSES):
            raise DataError(f"num_classes must be an integer >= {MIN_CLASSES}, got {num_classes!r}")
        train = Split.from_arrays(train_images, train_labels, "training arrays", shape, num_classes)
        test = Split.from_arrays(test_images, test_labels, "test arrays", shape, num_classes)
        if not len(test):
            raise DataError("test arrays: the test split holds no images (every run measures test accuracy on it)")
        train, validation = split_train(train, validation_size)
        return cls(train, validation, test, name, "arrays", shape, num_classes)


class ValidationSizeError(DataError):
    """A validation size that leaves no training data (the setting's fault, not the files')."""


def split_train(train: Split, validation_size: int = VALIDATION_SIZE) -> tuple[Split, Split]:
    """The tutorial's split: the first `validation_size` examples validate; at least one must train."""
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)) or validation_size < 0:
        raise DataError(f"validation size must be an integer >= 0, got {validation_size!r}")
    if validation_size >= len(train):
        raise ValidationSizeError(f"validation size {validation_size} does not fit {len(train)} examples: it leaves no "
                        f"training data (choose --validation-size below {len(train)})")
    return (
        Split(train.images_uint8[validation_size:], train.labels[validation_size:]),
        Split(train.images_uint8[:validation_size], train.labels[:validation_size]),
    )


def _pair(images: np.ndarray, labels: np.ndarray, where: str) -> Split:
    """A split from an IDX images array (n, H, W[, C]) and its labels (n,)."""
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if min(images.shape[1:], default=0) < 1:
        raise DataError(f"{where}: images are {images.shape[1:]}; an image needs at least one pixel")
    return Split(images.reshape(len(images), math.prod(images.shape[1:])), labels.astype(np.int32))


def _check_directory(data_dir: Path) -> None:
    try:
        if not data_dir.is_dir():
            problem = "is not a directory" if data_dir.exists() else "does not exist"
            raise DataError(f"data directory {data_dir} {problem}")
    except OSError as err:  # a parent directory without search permission
        raise DataError(f"data directory {data_dir}: cannot read it ({err.strerror or err})") from err


def load_idx_dir(data_dir: str | os.PathLike, name: str | None = "mnist",
                 validation_size: int = VALIDATION_SIZE, check_name: bool = False) -> Datasets:
    """Reads the four IDX files of a data set in MNIST's format from a directory: images (n, H, W) or
    (n, H, W, C), the same shape in both splits; the class count is 1 + the largest label.

    `name` None names the data after what it is (`identify`); `check_name` refuses a `name` of a set
    jaxlin knows (`config.DATASETS`) whose known files the directory's contradict (see `check_known`)."""
    data_dir = Path(data_dir)
    _check_directory(data_dir)
    paths = find_idx_files(data_dir)
    arrays = read_idx_files(data_dir, paths)
    if name is None:
        name = identify(data_dir, paths, arrays)
    elif check_name:
        check_known(name, paths, arrays)
    train = _pair(arrays["train_images"], arrays["train_labels"], f"{data_dir} (train)")
    test = _pair(arrays["test_images"], arrays["test_labels"], f"{data_dir} (t10k)")
    if not len(test):
        raise DataError(f"{data_dir} (t10k): the test split holds no images")
    shape = image_shape_of(arrays["train_images"], where=f"{data_dir} (train)")
    train, validation = split_train(train, validation_size)
    return Datasets(train, validation, test, name=name, source=str(data_dir), image_shape=shape,
                    num_classes=class_count(arrays["train_labels"], arrays["test_labels"]))


# Labels first: a few kB that already tell most sets apart, before tens of MB of images are hashed.
_CHECK_ORDER = ("train_labels", "test_labels", "train_images", "test_images")


def _known_files(name: str) -> dict[str, download.RemoteFile]:
    by_stem = {f.stem: f for f in download.FILES.get(name, ())}
    return {key: by_stem[stem] for key, stem in IDX_FILES.items() if stem in by_stem}


def _differing(name: str, paths: dict[str, Path], arrays: dict[str, np.ndarray]) -> Path | None:
    """The first of the directory's files named as `name`'s known files (gz or not: the known sha256 is of
    the uncompressed content) whose content is not that file's; None when none differs."""
    known = _known_files(name)
    for key in _CHECK_ORDER:
        path = paths[key]
        if key in known and path.name in (known[key].stem, known[key].stem + ".gz") \
                and content_sha256(arrays[key]) != known[key].sha256:
            return path
    return None


def check_known(name: str, paths: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    """Refuses, in one line, data named after a set jaxlin knows whose files (those named as that set's
    files, gz or not) hold something else: a run would train on other data and record it as `name`."""
    if name not in download.FILES:
        return
    path = _differing(name, paths, arrays)
    if path is not None:
        raise DataError(f"--dataset {name}: {path} is not {name}'s file (its content differs from {name}'s known "
                        f"sha256); point --data-dir at {name}'s files, or drop --dataset to name the data after "
                        f"its directory")


def identify(data_dir: Path, paths: dict[str, Path], arrays: dict[str, np.ndarray]) -> str:
    """The name of the data in `data_dir`: a set jaxlin knows when its four files are that set's files (gz
    or not) with their known content, else the directory's name (a known set's name only with its content)."""
    for name in download.FILES:
        if (all(paths[key].name in (f.stem, f.stem + ".gz") for key, f in _known_files(name).items())
                and _differing(name, paths, arrays) is None):
            return name
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", data_dir.absolute().name).lstrip("._-") or "data"
    return f"{stem}-dir" if stem in download.FILES else stem


def _tfds_split(tfds, name: str, split: str, tfds_dir) -> tuple[np.ndarray, np.ndarray]:
    dataset = tfds.load(name, split=split, as_supervised=True, data_dir=tfds_dir)
    # Iterating in batches, not `batch_size=-1`, which aborts under mock_data (tfds 4.9.10).
    images, labels = [], []
    for batch_images, batch_labels in tfds.as_numpy(dataset.batch(10_000)):
        images.append(batch_images)
        labels.append(batch_labels)
    images = np.concatenate(images)
    return images.astype(np.uint8), np.concatenate(labels)


def load_tfds(name: str = "mnist", tfds_dir: str | None = None, validation_size: int = VALIDATION_SIZE) -> Datasets:
    """Loads through tensorflow-datasets (downloads on first use; needs TensorFlow)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(_no_data_message(name, f"tensorflow-datasets is not installed ({err})")) from err
    try:
        train_images, train_labels = _tfds_split(tfds, name, "train", tfds_dir)
        test_images, test_labels = _tfds_split(tfds, name, "test", tfds_dir)
    except DataError:
        raise
    except Exception as err:  # tfds raises many types for network and build failures
        raise DataError(_no_data_message(name, f"tensorflow-datasets failed: {err}")) from err
    data = Datasets.from_arrays(train_images, train_labels, test_images, test_labels, validation_size, name)
    return dataclasses.replace(data, source="tensorflow-datasets")


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


def load_datasets(name: str | None = None, data_dir: str | os.PathLike | None = None, source: str = "auto",
                  progress: bool = True, log=None, validation_size: int = VALIDATION_SIZE,
                  check_name: bool = False) -> Datasets:
    """Loads `name` (default: MNIST) from the first of: `data_dir`, $JAXLIN_DATA_DIR, the download cache,
    a download from the mirrors (see `download`); or through tensorflow-datasets when `source` is "tfds".
    With a directory, `name` only names the data (any IDX set; None: named after what it is, see
    `identify`), and `check_name` refuses the name of a set jaxlin knows whose known files the
    directory's contradict; jaxlin fetches only the sets it knows (`config.DATASETS`). The first
    `validation_size` training examples validate. Timed as the "data_load" phase of the run's time breakdown
    (`runtime.timing`), the data's `Datasets.fingerprint` included (every run's checkpoints record it)."""
    from jaxlin.runtime.timing import marks

    with marks.phase("data_load"):
        data = _load_datasets(name, data_dir, source, progress, log, validation_size, check_name)
        data.fingerprint  # noqa: B018 (computed once, here: part of loading, not of the first checkpoint)
    return data


def _load_datasets(name: str | None, data_dir: str | os.PathLike | None, source: str, progress: bool, log,
                   validation_size: int, check_name: bool) -> Datasets:
    directory = resolve_data_dir(data_dir)
    if directory is not None:
        return load_idx_dir(directory, name, validation_size, check_name)
    name = name or "mnist"
    if name not in DATASETS:
        raise DataError(f"jaxlin cannot fetch a data set called {name!r} (it fetches {', '.join(DATASETS)}); "
                        f"pass --data-dir DIR (or {DATA_DIR_ENV}=DIR), a directory holding its four IDX files")
    if source == "tfds":
        return load_tfds(name, validation_size=validation_size)
    cached = download.cached_files(name)
    if cached is None:
        try:
            cached = download.download(name, progress=progress, log=log or (lambda line: None))
        except download.DownloadError as err:
            raise DataError(_no_data_message(name, str(err))) from err
    try:
        return load_idx_dir(cached, name, validation_size)
    except ValidationSizeError:
        raise
    except DataError as err:
        raise DataError(f"{err} (in jaxlin's cache: `jaxlin download --dataset {name}` replaces a file "
                        f"that does not verify)") from err
