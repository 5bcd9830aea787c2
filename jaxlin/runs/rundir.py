"""A run's output directory: checked before training, locked while in use, published as a whole.

Layout of `--output-dir`:
- `checkpoints/`: the train state every few steps (see `state`);
- `checkpoints-set-aside/`: checkpoints that `--resume` found damaged, moved here, never deleted;
- `logs/`: a multi-process run's runtime log, when it failed (see `supervise`);
- `metrics.jsonl`: one JSON line per evaluation, appended and flushed as it happens;
- `tensorboard/`: with `--tensorboard`, the same records as TensorBoard event files (see `tensorboard`);
- `profile/`: with `--profile`, a `jax.profiler` trace (see `runtime.profiling`);
- `params.npz`, five figures, and `metrics.json` last: the finished run. They are
  written into a staging directory inside the output directory and moved into
  place only when all are written, `metrics.json` after the others, so its
  presence marks a complete run;
- `.jaxlin.lock`: held with an OS lock (`flock`) by the run that uses the
  directory. The OS drops the lock when that process ends, however it ends, so a
  crash never leaves the directory locked; the file only holds the holder's PID.

Only these names (and a sweep's outputs: `sweep.json`, `sweep.png`, `best/`) are ever
removed, by `--overwrite`, and only when the folders among them hold nothing but what jaxlin
writes there (`RunDir.foreign_files`): a directory with anything else in them is refused.
Stale staging directories, which a killed run leaves, are cleaned up by the next one.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import math
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from collections.abc import Callable

from jaxlin.errors import JaxlinError
from jaxlin.runs.tensorboard import TENSORBOARD_DIR, is_event_file
from jaxlin.runtime.profiling import PROFILE_DIR
from jaxlin.runtime.timing import marks

# The phase of the time breakdown (see `runtime.timing`) that checking, locking and clearing the directory adds to.
_PHASE = "directory"

LOCK_FILE = ".jaxlin.lock"
CHECKPOINT_DIR = "checkpoints"  # orbax checkpoints of the train state (see `checkpoints`)
SET_ASIDE_DIR = "checkpoints-set-aside"  # damaged ones, moved here, never deleted
RECORDS_FILE = "metrics.jsonl"
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.npz"
STAGING_PREFIX = ".staging-"
FIGURES = ("example_images.png", "misclassified.png", "weights.png", "confusion_matrix.png",
           "learning_curve.png")
RUN_FILES = (METRICS_FILE, RECORDS_FILE, PARAMS_FILE, *FIGURES, CHECKPOINT_DIR, SET_ASIDE_DIR, TENSORBOARD_DIR,
             PROFILE_DIR)
SWEEP_OUTPUTS = ("sweep.json", "sweep.png", "best")  # what `jaxlin sweep` writes besides records and checkpoints
LOGS_DIR = "logs"  # the runtime logs of a multi-process run's processes (runtime.supervise writes them)
# Everything jaxlin writes into an output directory, by either command: what `--overwrite` removes, so that
# a train run written over a sweep (or the reverse) leaves nothing of the other behind.
JAXLIN_OUTPUTS = tuple(dict.fromkeys((*RUN_FILES, *SWEEP_OUTPUTS, LOGS_DIR)))


# What jaxlin writes inside the folders it owns: orbax step directories (a killed save's temporary one
# too) holding the record and state items, the same moved aside as "STEP-REASON[-N]", the best sweep
# member's outputs, the runtime logs. Anything else there is someone else's: never removed.
_STEP_DIR = re.compile(r"\d+(\.orbax-checkpoint-tmp.*)?")
_SET_ASIDE_STEP_DIR = re.compile(r"\d+-.+")
_STEP_ITEMS = ("record", "state", "_CHECKPOINT_METADATA", "commit_success.txt")
_BEST_FILES = (METRICS_FILE, PARAMS_FILE, RECORDS_FILE, *FIGURES)
_LOG_FILE = re.compile(r"runtime-.+\.log")


def _is_step_dir(path: Path) -> bool:
    """An orbax step directory as jaxlin's `CheckpointStore` writes it (possibly half-written)."""
    if path.is_symlink() or not path.is_dir():
        return False
    return all(child.name.split(".orbax-checkpoint-tmp")[0] in _STEP_ITEMS for child in path.iterdir())


def _foreign_in(folder: Path, name: str) -> list[Path]:
    """The entries of `folder` (a jaxlin-named folder of an output directory) that jaxlin did not write."""
    if name == CHECKPOINT_DIR:
        return [p for p in folder.iterdir() if not (_STEP_DIR.fullmatch(p.name) and _is_step_dir(p))]
    if name == SET_ASIDE_DIR:
        return [p for p in folder.iterdir() if not (_SET_ASIDE_STEP_DIR.fullmatch(p.name) and _is_step_dir(p))]
    if name == SWEEP_OUTPUTS[2]:  # best/
        return [p for p in folder.iterdir() if p.name not in _BEST_FILES or p.is_symlink() or not p.is_file()]
    if name == LOGS_DIR:
        return [p for p in folder.iterdir() if not _LOG_FILE.fullmatch(p.name) or p.is_symlink() or not p.is_file()]
    if name == TENSORBOARD_DIR:  # event files, a sweep's in a folder per member
        return [p for p in folder.iterdir() if not (_is_event_file(p) or (
            p.is_dir() and not p.is_symlink() and all(_is_event_file(q) for q in p.iterdir())))]
    if name == PROFILE_DIR:  # plugins/profile/<time>/<files>, as jax.profiler writes them
        return [p for p in folder.iterdir() if not (p.name == "plugins" and _is_trace_tree(p))]
    return []


# The folders that only show a run (TensorBoard's event files, profiler traces): what else is in them
# matters only to `--overwrite`, which removes them; a run resumes or starts beside it.
VIEW_FOLDERS = (TENSORBOARD_DIR, PROFILE_DIR)


def _is_event_file(path: Path) -> bool:
    return is_event_file(path.name) and path.is_file() and not path.is_symlink()


def _is_trace_tree(plugins: Path) -> bool:
    """plugins/ holding only profile/<time>/ folders of files: what `jax.profiler` writes there, and what a
    viewer adds beside a trace it opened (XProf caches its tools' data there: .cached_tools.json,
    *.hlo_proto.pb, ALL_HOSTS.op_stats_v2.pb)."""
    def only(folder: Path, check) -> bool:
        return folder.is_dir() and not folder.is_symlink() and all(check(p) for p in folder.iterdir())

    def is_trace(folder: Path) -> bool:
        return only(folder, lambda f: f.is_file() and not f.is_symlink())

    return only(plugins, lambda p: p.name == "profile" and only(p, is_trace))


class RunDirError(JaxlinError, ValueError):
    """An output directory that this run cannot use."""


class RunDirGone(FileNotFoundError):
    """The output directory this run locked was moved or removed while it ran."""


def resume_command(command: str, out: str | os.PathLike, several_processes: bool = False) -> str:
    """The command line that continues the run of `jaxlin COMMAND` in `out`."""
    line = f"jaxlin {command} --resume --output-dir {shlex.quote(str(out))}"
    if several_processes:
        line += " (on every process, with its distributed flags as before)"
    return line


def has_checkpoints(out: str | os.PathLike) -> bool:
    """Whether `out` holds a checkpoint to resume from (by its name; `checkpoints` verifies it)."""
    directory = Path(out) / CHECKPOINT_DIR
    try:
        return any(name.isdigit() for name in os.listdir(directory))
    except OSError:
        return False


def check_writable(path: str | os.PathLike) -> Path:
    """Fails before any data is loaded or step trained when `path` cannot be written."""
    with marks.phase(_PHASE):
        return _check_writable(path)


def _check_writable(path: str | os.PathLike) -> Path:
    import errno

    out = Path(path)
    try:
        os.stat(out)
    except OSError as err:  # Path.exists() says False for these, and mkdir then says "File exists"
        if err.errno == errno.ELOOP:
            raise RunDirError(f"output dir {out}: is a symlink loop") from None
        if out.is_symlink():
            raise RunDirError(f"output dir {out}: is a symlink to {os.readlink(out)}, which does not exist") \
                from None
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise RunDirError(f"output dir {out}: cannot be used ({err.strerror})") from None
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output dir {out} exists and is not a directory")
    target = out if out.exists() else out.absolute().parent
    while not target.exists():
        target = target.parent
    if not target.is_dir() or not _writable(target):
        where = "it" if target == out else target
        raise RunDirError(f"output dir {out}: cannot write {'in' if target == out else 'under'} {where}")
    return out


def _writable(directory: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def to_json(value, **kwargs) -> str:
    """Strict JSON: NaN and infinities become null, never the non-standard `NaN`."""
    return json.dumps(_strict(value), allow_nan=False, **kwargs)


def _strict(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


RECORD_FIELDS = {"step": (int,), "test_accuracy": (float, int, type(None)), "train_loss": (float, int, type(None)),
                 "elapsed_seconds": (float, int)}


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a kind of run keeps in its directory: `jaxlin train`'s, or a sweep's (see `sweep`)."""

    run_files: tuple[str, ...]  # the only names `--overwrite` removes
    finished_file: str  # written last: its presence marks a complete run
    record_fields: dict  # each metrics.jsonl record: exactly these fields, of these types


TRAIN_LAYOUT = Layout(RUN_FILES, METRICS_FILE, RECORD_FIELDS)


def _parse_record(line: str, fields: dict = RECORD_FIELDS) -> dict | None:
    """One evaluation record as `append_record` writes it, or None for anything else."""
    def refuse(constant):
        raise ValueError(constant)

    try:
        record = json.loads(line, parse_constant=refuse)
    except ValueError:
        return None
    if not isinstance(record, dict) or set(record) != set(fields):
        return None
    for name, types in fields.items():
        if isinstance(record[name], bool) or not isinstance(record[name], types):
            return None
    return record if record["step"] >= 0 else None


def _valid_records(lines: list[str], up_to_step: int, fields: dict = RECORD_FIELDS) -> list[dict]:
    """The records of steps <= `up_to_step`, in increasing step order; anything else dropped."""
    kept = []
    for line in lines:
        record = _parse_record(line, fields)
        if record is not None and record["step"] <= up_to_step and (not kept or record["step"] > kept[-1]["step"]):
            kept.append(record)
    return kept


class RunDir:
    """An output directory held by this process. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, layout: Layout = TRAIN_LAYOUT):
        self.path = Path(path)
        self.layout = layout
        self._lock_fd: int | None = None

    def __enter__(self) -> RunDir:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    def _open_lock_file(self, create: bool) -> int | None:
        flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0)  # never write through a symlink
        try:
            return os.open(self.path / LOCK_FILE, flags, 0o644)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as err:
            raise RunDirError(f"output dir {self.path}: cannot use its lock file {LOCK_FILE} "
                              f"({err.strerror or err})") from err

    def _try_lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"output dir {self.path} is in use by another jaxlin run (PID {holder}); "
                f"wait for it to end or choose another --output-dir") from None

    def check_available(self, mode: str) -> None:
        """Fails at once, before any data is loaded, when the directory is in use by another run or
        holds a run that `mode` may not touch. (`lock` holds the lock; this only looks.)"""
        with marks.phase(_PHASE):
            self._check_available(mode)

    def _check_available(self, mode: str) -> None:
        if not self.path.is_dir():
            return
        if self._lock_fd is None:
            fd = self._open_lock_file(create=False)
            if fd is not None:
                self._try_lock(fd)
                os.close(fd)  # released: the run takes it for good once its data is loaded
        foreign = self.foreign_files(removing=mode == "overwrite")
        if foreign:
            shown = ", ".join(str(p.relative_to(self.path)) for p in foreign[:3])
            shown += ", ..." if len(foreign) > 3 else ""
            raise RunDirError(f"output dir {self.path} holds files jaxlin did not write: {shown}; choose another "
                              f"--output-dir (jaxlin never removes them)")
        found = self.run_files()
        if mode == "new" and found:
            holder = self._holder()
            if holder is None:
                raise RunDirError(f"output dir {self.path} already holds a run ({', '.join(found)}); "
                                  f"pass --resume to continue it or --overwrite to replace it")
            raise RunDirError(f"output dir {self.path} already holds a jaxlin {holder} run ({', '.join(found)}); "
                              f"continue it with {resume_command(holder, self.path)}, or pass --overwrite to "
                              f"replace it")

    def _holder(self) -> str | None:
        """The command whose run the directory holds, from its files (None when they do not say)."""
        if any((self.path / name).exists() for name in SWEEP_OUTPUTS):
            return "sweep"
        if any((self.path / name).exists() for name in (METRICS_FILE, PARAMS_FILE, *FIGURES)):
            return "train"
        try:
            with open(self.path / RECORDS_FILE, "rb") as records:
                first = json.loads(records.readline())
        except (OSError, ValueError):
            return None
        if isinstance(first, dict) and "validation_accuracy" in first:
            return "sweep"
        return "train" if isinstance(first, dict) and "test_accuracy" in first else None

    def lock(self) -> None:
        """Takes the directory's lock at once, or fails naming the process that holds it."""
        with marks.phase(_PHASE):
            self._lock()

    def _lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = self._open_lock_file(create=True)
        self._try_lock(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        for stale in self.path.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def run_files(self) -> list[str]:
        """The names of a previous run's outputs found here (an empty file or directory, which a run
        that failed before its first record leaves, does not count)."""
        found = []
        for name in self.layout.run_files:
            path = self.path / name
            if name in VIEW_FOLDERS and (path.is_symlink() or not path.is_dir()):
                continue  # not jaxlin's (a folder is): `foreign_files`
            if path.is_symlink() or (path.is_file() and path.stat().st_size) or (path.is_dir() and any(path.iterdir())):
                found.append(name)
        return found

    def foreign_files(self, removing: bool = True) -> list[Path]:
        """What jaxlin did not write inside the folders of its own names (checkpoints/, best/...): a
        directory holding any is not (only) a jaxlin run, and `--overwrite` must not remove it. The
        `VIEW_FOLDERS` are looked into (and a file or symlink of their names counted) only when
        `removing`: a new or resumed run writes beside what is there."""
        found = []
        if removing:
            found += [self.path / name for name in VIEW_FOLDERS
                      if (self.path / name).is_symlink() or (self.path / name).exists() and not
                      (self.path / name).is_dir()]
        for name in (CHECKPOINT_DIR, SET_ASIDE_DIR, SWEEP_OUTPUTS[2], LOGS_DIR, *(VIEW_FOLDERS * removing)):
            folder = self.path / name
            try:
                if folder.is_symlink() or not folder.is_dir():
                    continue
                found.extend(sorted(_foreign_in(folder, name)))
            except OSError as err:
                raise RunDirError(f"output dir {self.path}: cannot look into {name}/ ({err.strerror or err})") from err
        return found

    def has_finished_run(self) -> bool:
        return (self.path / self.layout.finished_file).is_file()

    def remove_run(self) -> None:
        """Removes a previous run's outputs, of any command (`--overwrite`), and whatever this run's layout
        writes; other files stay, and a folder of its names holding anything it did not write is refused
        (`foreign_files`), never removed."""
        with marks.phase(_PHASE):
            self._remove_run()

    def _remove_run(self) -> None:
        foreign = self.foreign_files()
        if foreign:
            raise RunDirError(f"output dir {self.path} holds files jaxlin did not write: {foreign[0]}; choose "
                              f"another --output-dir")
        for name in dict.fromkeys((*JAXLIN_OUTPUTS, *self.layout.run_files)):
            target = self.path / name
            if not (target.exists() or target.is_symlink()):
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()

    def unfinish(self) -> None:
        """A resumed run is not finished until it writes `metrics.json` again."""
        (self.path / self.layout.finished_file).unlink(missing_ok=True)

    def check_still_here(self) -> None:
        """Raises RunDirGone when the directory this run locked is no longer at its path (moved or
        removed): writing on would create a new directory there (orbax makes missing parents) and split
        the run in two."""
        if self._lock_fd is None:
            return
        try:
            here = os.stat(self.path / LOCK_FILE, follow_symlinks=False)
        except FileNotFoundError:
            here = None
        locked = os.fstat(self._lock_fd)
        if here is None or (here.st_dev, here.st_ino) != (locked.st_dev, locked.st_ino):
            raise RunDirGone(errno.ENOENT, "the output directory was moved or removed while the run was going",
                             str(self.path))

    def still_here(self) -> bool:
        try:
            self.check_still_here()
        except RunDirGone:
            return False
        return True

    def append_record(self, record: dict) -> None:
        self.check_still_here()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        fd = os.open(self.path / RECORDS_FILE, flags, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(to_json(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_records(self, up_to_step: int) -> list[dict]:
        """The evaluation records of steps <= `up_to_step`; later or half-written ones are dropped
        from the file too (a resumed run writes them again)."""
        path = self.path / RECORDS_FILE
        if not path.exists():
            return []
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
        kept = _valid_records(lines, up_to_step, self.layout.record_fields)
        if len(kept) != len(lines):
            from jaxlin.runs.params_file import atomic_write

            atomic_write(path, lambda h: h.write("".join(to_json(r) + "\n" for r in kept).encode()))
        return kept

    def publish(self, write: Callable[[Path], None]) -> list[str]:
        """Calls write(staging_dir), then moves what it wrote into the directory, the finished file
        (`metrics.json`) last; on any failure nothing is moved and the staging directory is removed.
        A directory it wrote replaces one of the same name."""
        staging = Path(tempfile.mkdtemp(dir=self.path, prefix=STAGING_PREFIX))
        try:
            write(staging)
            names = sorted(p.name for p in staging.iterdir())
            for name in sorted(names, key=lambda n: n == self.layout.finished_file):
                target = self.path / name
                if (staging / name).is_dir() and target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                (staging / name).replace(target)
            return names
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class FollowerRunDir(RunDir):
    """The run directory as seen by processes other than 0 of a multi-process run: they read it
    (records, whether a run finished) and write nothing; process 0 holds the lock and writes."""

    def lock(self) -> None:
        pass

    def check_available(self, mode: str) -> None:
        pass

    def remove_run(self) -> None:
        pass

    def unfinish(self) -> None:
        pass

    def append_record(self, record: dict) -> None:
        pass

    def read_records(self, up_to_step: int) -> list[dict]:
        path = self.path / RECORDS_FILE
        if not path.exists():
            return []
        return _valid_records(path.read_bytes().decode("utf-8", errors="replace").splitlines(), up_to_step,
                              self.layout.record_fields)

    def publish(self, write) -> list[str]:
        return []
