"""Fetching MNIST-format data sets from public mirrors into a verified cache.

Each file is checked by the sha256 of its *uncompressed* content, so a mirror that
recompresses the files still verifies, and decompression stops once it passes the
size the format promises (a gzip bomb costs at most that much). A download goes to
a temporary file in the cache directory and is renamed into place only once
verified: the cache never holds a failed or mismatching file. A mismatch, an HTTP
error, a timeout or a mirror that drips (see `MIN_BYTES_PER_SECOND`) moves on to the
next mirror. SIGINT and SIGTERM during a download remove the partial file and the lock
before the process stops. Only the standard library is used.

`JAXLIN_MIRRORS` (comma-separated base URLs) replaces the built-in mirrors: air-gapped
users point it at their own, and the tests at servers on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import http.client
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from jaxlin.config import DATASETS
from jaxlin.errors import JaxlinError

MIRRORS_ENV = "JAXLIN_MIRRORS"
CACHE_ENV = "JAXLIN_CACHE_DIR"
# Seconds to connect and between reads: a mirror that stalls is left for the next one.
TIMEOUT_SECONDS = 3.0
# A mirror that drips (under 10 kB/s on average once 10 s have passed) is left too. The rate is
# checked after every read, whatever it brought: reads return what has arrived, they do not wait
# for a full block.
MIN_BYTES_PER_SECOND = 10_000
MIN_SPEED_AFTER_SECONDS = 10.0
_READ_BLOCK = 1 << 16
LOCK_FILE = ".download.lock"
GZIP_MAGIC = b"\x1f\x8b"
# The four files of an MNIST-format data set, without `.gz`. Defined here, below `datasets` (which
# reads them and imports this module), so that this module needs nothing of `datasets`.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    stem: str  # the IDX file name without `.gz`
    size: int  # bytes, uncompressed
    sha256: str  # of the uncompressed bytes


_IMAGES_TRAIN, _LABELS_TRAIN = 47_040_016, 60_008
_IMAGES_TEST, _LABELS_TEST = 7_840_016, 10_008
FILES = {
    "mnist": (
        RemoteFile(IDX_FILES["train_images"], _IMAGES_TRAIN,
                   "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        RemoteFile(IDX_FILES["train_labels"], _LABELS_TRAIN,
                   "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        RemoteFile(IDX_FILES["test_images"], _IMAGES_TEST,
                   "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        RemoteFile(IDX_FILES["test_labels"], _LABELS_TEST,
                   "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
    "fashion_mnist": (
        RemoteFile(IDX_FILES["train_images"], _IMAGES_TRAIN,
                   "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        RemoteFile(IDX_FILES["train_labels"], _LABELS_TRAIN,
                   "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        RemoteFile(IDX_FILES["test_images"], _IMAGES_TEST,
                   "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        RemoteFile(IDX_FILES["test_labels"], _LABELS_TEST,
                   "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
}
# The original MNIST host has refused downloads for years; these mirror its files.
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
}


class DownloadError(JaxlinError, ValueError):
    """No mirror gave a verified copy of a file, or a local copy does not verify."""


def mirrors(dataset: str) -> tuple[str, ...]:
    setting = os.environ.get(MIRRORS_ENV)
    if setting is not None:
        return tuple(url.strip() for url in setting.split(",") if url.strip())
    return MIRRORS[dataset]


def cache_dir() -> Path:
    """$JAXLIN_CACHE_DIR, else $XDG_CACHE_HOME/jaxlin, else ~/.cache/jaxlin."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxlin"


def dataset_cache(dataset: str) -> Path:
    return cache_dir() / dataset


def cached_files(dataset: str) -> Path | None:
    """The cache directory of `dataset` when it holds all four files, else None."""
    directory = dataset_cache(dataset)
    try:
        if all(any((directory / (f.stem + suffix)).is_file() for suffix in (".gz", ""))
               for f in FILES[dataset]):
            return directory
    except OSError:  # unreadable (permissions): reading the data there names the file and the reason
        return directory
    return None


def _check_content(path: Path, expected: RemoteFile) -> str | None:
    """None when `path` (gzip or not) holds exactly the expected bytes, else what is wrong.

    Decompression is bounded: at most `expected.size + 1` bytes are ever produced."""
    digest, produced = hashlib.sha256(), 0
    limit = expected.size + 1
    try:
        raw = open(path, "rb")
    except OSError as err:
        return f"cannot read it ({err.strerror or err})"
    try:
        with raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if compressed else raw
            while produced < limit:
                block = stream.read(min(_READ_BLOCK, limit - produced))
                if not block:
                    break
                digest.update(block)
                produced += len(block)
    except (OSError, EOFError, zlib.error) as err:
        return f"corrupt or truncated gzip data ({err})"
    if produced != expected.size:
        more = "more than" if produced > expected.size else "only"
        return f"holds {more} {min(produced, expected.size)} bytes, expected {expected.size}"
    if digest.hexdigest() != expected.sha256:
        return f"sha256 {digest.hexdigest()} is not the published {expected.sha256}"
    return None


class _MirrorProblem(Exception):
    """This mirror will not do: try the next."""


# The signal `_signals_stop` turned into StopNow, kept in case the exception was raised inside a callback
# that cannot raise (Python then drops it): the download loop raises it again.
_stop_pending: list[int] = []


def _fetch(url: str, destination, progress: bool, remote: RemoteFile) -> None:
    """Streams `url` into `destination`, giving up on a mirror that sends more than the file can
    be (even stored uncompressed) or that falls below a minimum speed (a drip never ends)."""
    from tqdm.auto import tqdm

    limit = remote.size + remote.size // 100 + (1 << 16)
    request = urllib.request.Request(url, headers={"User-Agent": "jaxlin"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
        total = response.headers.get("Content-Length")
        # read1: whatever one receive brings (at least a byte, or a timeout), so a drip is measured
        # as it arrives; read(n) would wait until n bytes have come, however slowly.
        read = getattr(response, "read1", None) or response.read
        started, received = time.monotonic(), 0
        with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                  desc=remote.stem, disable=not progress, leave=False) as bar:
            while block := read(_READ_BLOCK):
                if _stop_pending:  # a StopNow that a callback swallowed (JAX's garbage-collector hook)
                    from jaxlin.runtime.signals import StopNow

                    raise StopNow(_stop_pending[0])
                received += len(block)
                if received > limit:
                    raise _MirrorProblem(f"sent more than {limit} bytes, more than the file can be")
                elapsed = time.monotonic() - started
                if elapsed > MIN_SPEED_AFTER_SECONDS and received / elapsed < MIN_BYTES_PER_SECOND:
                    raise _MirrorProblem(f"too slow ({received / elapsed:.0f} bytes/s after {elapsed:.0f} s)")
                destination.write(block)
                bar.update(len(block))


def _first_line(value) -> str:
    return (str(value).strip().splitlines() or [""])[0]


def fetch_file(dataset: str, remote: RemoteFile, directory: Path, progress: bool = True) -> Path:
    """A verified copy of `remote` in `directory`, from the first mirror that gives one."""
    directory.mkdir(parents=True, exist_ok=True)
    problems = []
    for base in mirrors(dataset):
        url = base.rstrip("/") + "/" + remote.stem + ".gz"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{remote.stem}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                _fetch(url, handle, progress, remote)
            problem = _check_content(Path(tmp), remote)
            if problem is None:
                with open(tmp, "rb") as handle:  # a mirror may serve the file uncompressed
                    name = remote.stem + (".gz" if handle.read(2) == GZIP_MAGIC else "")
                for stale in (directory / remote.stem, directory / (remote.stem + ".gz")):
                    stale.unlink(missing_ok=True)  # a damaged copy under the other name
                os.chmod(tmp, 0o644)
                os.replace(tmp, directory / name)
                return directory / name
            problems.append(f"{url}: {problem}")
        except urllib.error.HTTPError as err:
            problems.append(f"{url}: HTTP {err.code} {_first_line(err.reason)}")
        except (_MirrorProblem, OSError, http.client.HTTPException, ValueError) as err:  # URLError: an OSError
            reason = getattr(err, "reason", None) or err or type(err).__name__
            problems.append(f"{url}: {_first_line(reason)}")
        finally:
            Path(tmp).unlink(missing_ok=True)
    if not problems:
        raise DownloadError(f"no mirrors to download {remote.stem}.gz from ({MIRRORS_ENV} is empty)")
    raise DownloadError(f"could not download {remote.stem}.gz: " + "; ".join(problems))


def download(dataset: str = "mnist", directory: str | os.PathLike | None = None, progress: bool = True,
             log=print) -> Path:
    """Fetches and verifies the four files of `dataset` into `directory` (default: the cache);
    files already there are kept. Returns the directory."""
    if dataset not in DATASETS:
        raise DownloadError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    target = Path(directory) if directory is not None else dataset_cache(dataset)
    if target.exists() and not target.is_dir():
        raise DownloadError(f"{target} exists and is not a directory")
    created = not target.exists()
    try:
        with _signals_stop():
            target.mkdir(parents=True, exist_ok=True)
            with _locked(target):
                _remove_partial_files(target)  # left by a killed download; none is in progress
                try:
                    for remote in FILES[dataset]:
                        found = _local_copy(target, remote)
                        if found is not None and _check_content(found, remote) is None:
                            continue
                        log(f"Downloading {dataset} {remote.stem}.gz into {target}"
                            + (f" (replacing a copy that does not verify: {found.name})" if found else ""))
                        fetch_file(dataset, remote, target, progress)
                except BaseException:
                    _remove_partial_files(target)  # one a signal caught before its name was kept
                    raise
    except OSError as err:
        raise DownloadError(f"cannot write the data into {target}: {err.strerror or err}") from err
    except BaseException:
        if created and target.is_dir() and not any(p.name != LOCK_FILE for p in target.iterdir()):
            shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def _remove_partial_files(directory: Path) -> None:
    for partial in directory.glob(".*.part"):
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_stop():
    """While downloading in a process with no plan of its own for SIGINT and SIGTERM (`jaxlin
    download`, `jaxlin evaluate`), they raise `StopNow`: the code on the way out removes the partial
    file and the lock, and the command reports the stop (exit 128 + the signal's number). A process
    that handles them already (`jaxlin train`'s StopRequest) keeps its handlers. A second signal
    while the first is being cleaned up after is ignored, so the cleanup finishes."""
    from jaxlin.runtime.signals import STOP_SIGNALS, StopNow, quiet_swallowed_stops

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = _stop_pending
    stopping.clear()

    def handle(signum, frame):
        if stopping:
            return
        stopping.append(signum)
        raise StopNow(signum)

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
            previous[signum] = signal.signal(signum, handle)
    try:
        with quiet_swallowed_stops():
            yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stopping.clear()


def _local_copy(directory: Path, remote: RemoteFile) -> Path | None:
    for suffix in (".gz", ""):
        candidate = directory / (remote.stem + suffix)
        try:
            if candidate.is_file():
                return candidate
        except OSError:  # cannot even look (permissions): reading it will say why
            return candidate
    return None


@contextlib.contextmanager
def _locked(directory: Path):
    """One download into a directory at a time: a second one waits, then finds the files there.

    The lock file is removed on the way out, while still locked; a process that was waiting on
    the removed file sees that the path no longer names what it locked and locks the new one."""
    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # removed by the download that held it: lock the new one
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def verify(directory: str | os.PathLike, dataset: str = "mnist") -> list[str]:
    """Checks each of `dataset`'s files in `directory`; returns one line per file, raises
    DownloadError naming every file that is missing or does not verify."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DownloadError(f"{directory} is not a directory")
    lines, bad = [], []
    for remote in FILES[dataset]:
        found = _local_copy(directory, remote)
        if found is None:
            bad.append(f"{directory / remote.stem}.gz: missing")
            continue
        problem = _check_content(found, remote)
        if problem:
            bad.append(f"{found}: {problem}")
        else:
            lines.append(f"{found}: ok (sha256 {remote.sha256[:12]}...)")
    if bad:
        raise DownloadError("; ".join(bad))
    return lines
