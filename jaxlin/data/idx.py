"""Reading IDX files (the format of MNIST and its kin: KMNIST, EMNIST, Fashion-MNIST), validated.

An IDX file is a big-endian header (0, 0, type, ndim, then ndim uint32 sizes) and the bytes it
promises; jaxlin reads unsigned-byte files, gzip-compressed or not. Every header is checked before
its body is read, and no more than the promised bytes (+ 1, to see trailing data) are decompressed,
so a lying or hostile file is refused in one line rather than read into memory. `datasets` turns
the four files of a data set into splits.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import stat
import time
import zlib
from pathlib import Path

import numpy as np

from jaxlin.data.download import GZIP_MAGIC, IDX_FILES
from jaxlin.data.files import NotARegularFile, open_regular
from jaxlin.errors import JaxlinError

_IDX_UBYTE = 0x08


class DataError(JaxlinError, ValueError):
    """The data could not be found or is not valid MNIST-format data."""


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


def read_idx(path: str | os.PathLike, expected_ndim: int | tuple[int, ...] | None = None,
             item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (gzip-compressed or not), validated.

    The header is a big-endian magic number (0, 0, type, ndim) followed by ndim
    uint32 dimensions; the payload must hold exactly the product of them. The header
    is checked (sizes in Python integers, against `expected_ndim` (one count or a tuple of them) and
    `item_shape`)
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
    allowed = (expected_ndim,) if isinstance(expected_ndim, int) else expected_ndim
    if allowed is not None and ndim not in allowed:
        raise DataError(f"{path}: has {ndim} dimensions, expected {' or '.join(str(n) for n in allowed)}")
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
    reason, and so is one that is there but not a regular file (a directory, a FIFO). Both `stem.gz` and
    `stem` there is refused: they may hold different data, and picking one silently hides which."""
    found, irregular = [], None
    for name in (stem + ".gz", stem):
        path = data_dir / name
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:  # e.g. a data directory without read or search permission
            raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err
        if stat.S_ISREG(mode):
            found.append(path)
        else:
            irregular = irregular or path
    if len(found) == 2:
        raise DataError(f"{data_dir} holds both {found[0].name} and {found[1].name}: keep one of them, so that "
                        f"it is clear which data is used")
    if found:
        return found[0]
    if irregular is not None:
        raise DataError(f"{irregular}: not a regular file")
    raise DataError(f"{data_dir}: missing {stem}.gz (or uncompressed {stem})")


def find_idx_files(data_dir: Path) -> dict[str, Path]:
    """The path of each of the four files of a data set's directory, by `IDX_FILES` key."""
    return {key: _find_idx_file(data_dir, stem) for key, stem in IDX_FILES.items()}


def read_idx_files(data_dir: Path, paths: dict[str, Path] | None = None) -> dict[str, np.ndarray]:
    """The four arrays of a data set's directory (at `paths`, default `find_idx_files`), by `IDX_FILES`
    key: images (n, H, W) or (n, H, W, C), labels (n,); each file gzip-compressed or not."""
    paths = find_idx_files(data_dir) if paths is None else paths
    arrays = {}
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        if key == "train_images":
            ndim, item_shape = (3, 4), None
        elif key == "test_images":  # refused from its header when its images are not the training images' shape
            ndim, item_shape = arrays["train_images"].ndim, arrays["train_images"].shape[1:]
        else:
            ndim, item_shape = 1, ()
        arrays[key] = read_idx_cached(paths[key], ndim, item_shape)
    return arrays


# A gzip-compressed file of at least this size is read from a decompressed copy in jaxlin's cache (the MNIST
# files: 0.2 s of gunzip for 0.02 s of reading a .npy).
CACHE_MIN_BYTES = 1 << 20
DECOMPRESSED_DIR = "decompressed"  # under jaxlin's cache directory (`download.cache_dir`)
RACY_SECONDS = 2.0


def _cache_entry(path: Path) -> tuple[Path, str, bool] | None:
    """Where the decompressed copy of the compressed file at `path` is cached, the prefix of every copy of
    that path, and whether a copy may be written: named after the path and the file's size, modification
    time, change time and inode, so that a file changed or replaced in any way is read again. A file
    modified in the last `RACY_SECONDS` is not copied (as git does): a change within the file system's
    timestamp granularity could keep its time. None for a file not worth it or not readable."""
    from jaxlin.data.download import cache_dir

    try:
        info = os.stat(path)
        with open(path, "rb") as raw:
            if raw.read(2) != GZIP_MAGIC:
                return None
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size < CACHE_MIN_BYTES:
        return None
    where = hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:16]
    # The change time too: a write in place whose modification time is put back (`touch -r`, `rsync
    # --inplace -t`) still sets it, and no user can.
    version = hashlib.sha256(f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}:"
                             f"{info.st_dev}".encode()).hexdigest()
    racy = abs(time.time() - info.st_mtime) < RACY_SECONDS
    return cache_dir() / DECOMPRESSED_DIR / f"{where}-{version[:16]}.npy", where, not racy


def read_idx_cached(path: str | os.PathLike, expected_ndim: int | tuple[int, ...] | None = None,
                    item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """`read_idx`, for a large gzip-compressed file from a decompressed copy that the first read leaves in
    jaxlin's cache (see `_cache_entry`); a copy that cannot be read or does not fit is read from the file again."""
    entry = _cache_entry(Path(path))
    if entry is not None:
        try:
            array = np.load(entry[0], allow_pickle=False)
        except (OSError, ValueError, EOFError):
            array = None
        allowed = (expected_ndim,) if isinstance(expected_ndim, int) else expected_ndim
        if (array is not None and array.dtype == np.uint8 and array.ndim >= 1
                and (allowed is None or array.ndim in allowed)
                and (item_shape is None or array.shape[1:] == tuple(item_shape))):
            return array
    array = read_idx(path, expected_ndim, item_shape)
    if entry is not None and entry[2]:
        # Written beside the run (0.2 s for MNIST's training images on a slow disk): the copy is for the next one.
        import threading

        writer = threading.Thread(target=_store, args=(entry[0], entry[1], array), name="jaxlin data copy",
                                  daemon=True)
        writer.start()
        _WRITERS.append(writer)
    return array


_WRITERS: list = []  # the threads writing copies (`wait_for_copies`)
_STALE_SECONDS = 600.0  # a temporary file this old is a writer's that never finished (its process ended)


def wait_for_copies() -> None:
    """Waits until the copies being written are written (tests; a process may end without it)."""
    while _WRITERS:
        _WRITERS.pop().join()


def _store(target: Path, prefix: str, array: np.ndarray) -> None:
    """Writes the decompressed copy (whole or not at all) and drops older copies of the same path, and
    temporary files that a process ended before finishing; best effort."""
    import tempfile

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for old in target.parent.glob(f"{prefix}-*.npy"):
            old.unlink(missing_ok=True)
        for stale in target.parent.glob(f".{prefix}-*.tmp"):
            if time.time() - stale.stat().st_mtime > _STALE_SECONDS:
                stale.unlink(missing_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{prefix}-", suffix=".tmp", delete=False)
        try:
            with handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(handle.name, target)
        except BaseException:
            os.unlink(handle.name)
            raise
    except OSError:
        pass


def content_sha256(array: np.ndarray) -> str:
    """sha256 of the uncompressed IDX file `read_idx` read `array` from (header and body): what
    `download.FILES` records of each file of the sets jaxlin knows."""
    digest = hashlib.sha256(bytes((0, 0, _IDX_UBYTE, array.ndim)))
    digest.update(b"".join(int(d).to_bytes(4, "big") for d in array.shape))
    digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return digest.hexdigest()
