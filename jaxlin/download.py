"""Fetching MNIST-format data sets from public mirrors into a verified cache.

Each file is checked by the sha256 of its *uncompressed* content, so a mirror that
recompresses the files still verifies, and decompression stops once it passes the
size the format promises (a gzip bomb costs at most that much). A download goes to
a temporary file in the cache directory and is renamed into place only once
verified: the cache never holds a failed or mismatching file. A mismatch, an HTTP
error or a timeout moves on to the next mirror. Only the standard library is used.

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
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from jaxlin.config import DATASETS
from jaxlin.data import IDX_FILES

MIRRORS_ENV = "JAXLIN_MIRRORS"
CACHE_ENV = "JAXLIN_CACHE_DIR"
# Seconds to connect and between reads: a mirror that stalls is left for the next one.
TIMEOUT_SECONDS = 3.0
# A mirror that drips (under 10 kB/s once 10 s have passed) is left too.
MIN_BYTES_PER_SECOND, MIN_SPEED_AFTER_SECONDS = 10_000, 10.0
_READ_BLOCK = 1 << 16
LOCK_FILE = ".download.lock"
_GZIP_MAGIC = b"\x1f\x8b"


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


class DownloadError(ValueError):
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
    if all(any((directory / (f.stem + suffix)).is_file() for suffix in (".gz", ""))
           for f in FILES[dataset]):
        return directory
    return None


def _check_content(path: Path, expected: RemoteFile) -> str | None:
    """None when `path` (gzip or not) holds exactly the expected bytes, else what is wrong.

    Decompression is bounded: at most `expected.size + 1` bytes are ever produced."""
    digest, produced = hashlib.sha256(), 0
    limit = expected.size + 1
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
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


def _fetch(url: str, destination, progress: bool, remote: RemoteFile) -> None:
    """Streams `url` into `destination`, giving up on a mirror that sends more than the file can
    be (even stored uncompressed) or that falls below a minimum speed (a drip never ends)."""
    from tqdm.auto import tqdm

    limit = remote.size + remote.size // 100 + (1 << 16)
    request = urllib.request.Request(url, headers={"User-Agent": "jaxlin"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
        total = response.headers.get("Content-Length")
        started, received = time.monotonic(), 0
        with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                  desc=remote.stem, disable=not progress, leave=False) as bar:
            while block := response.read(_READ_BLOCK):
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
                    name = remote.stem + (".gz" if handle.read(2) == _GZIP_MAGIC else "")
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
        target.mkdir(parents=True, exist_ok=True)
        with _locked(target):
            for stale in target.glob(".*.part"):  # left by a killed download; none is in progress
                stale.unlink(missing_ok=True)
            for remote in FILES[dataset]:
                found = _local_copy(target, remote)
                if found is not None and _check_content(found, remote) is None:
                    continue
                log(f"Downloading {dataset} {remote.stem}.gz into {target}"
                    + (f" (replacing a copy that does not verify: {found.name})" if found else ""))
                fetch_file(dataset, remote, target, progress)
    except OSError as err:
        raise DownloadError(f"cannot write the data into {target}: {err.strerror or err}") from err
    except BaseException:
        if created and target.is_dir() and not any(p.name != LOCK_FILE for p in target.iterdir()):
            shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def _local_copy(directory: Path, remote: RemoteFile) -> Path | None:
    return next((directory / (remote.stem + suffix) for suffix in (".gz", "")
                 if (directory / (remote.stem + suffix)).is_file()), None)


@contextlib.contextmanager
def _locked(directory: Path):
    """One download into a directory at a time: a second one waits, then finds the files there."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
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
            lines.append(f"{found}: ok (sha256 {remote.sha256[:12]}…)")
    if bad:
        raise DownloadError("; ".join(bad))
    return lines
