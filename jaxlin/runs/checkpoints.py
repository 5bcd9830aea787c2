"""The train state and its checkpoints: saved whole, verified before use, never deleted.

A train state (`training.state`) is everything a run needs to go on: params, optimizer
state and the step (the batch order follows from seed and step, see `sampler`).
`CheckpointStore` keeps it in `<output dir>/checkpoints/` through orbax's
`CheckpointManager`: each save is written to a temporary directory and renamed
into place when complete (a crash mid-save leaves nothing that looks like a
checkpoint; orbax removes the leftovers on the next start), only the latest N
are kept, and the same API later saves sharded arrays across hosts. Beside the
state each checkpoint holds a JSON record of the run (config, progress, model),
so `--resume` can refuse a config that would not continue the same run.

Why a digest: orbax and tensorstore read back flipped bytes in an array's data
without complaint, and a resumed run then trains on garbage. So each record
carries the sha256 of the state's arrays (and of the record itself), computed
from the host copy that is written, and `find_usable` checks both before a state
is used. A checkpoint is never deleted by jaxlin (orbax drops the oldest beyond
`--keep-checkpoints`, as asked): one that cannot be used is told apart as
- unreadable: the OS refuses to read it (permissions, I/O errors). Nothing is
  moved: the user can fix the cause and resume;
- damaged: readable, but its content does not verify. Set aside into
  `checkpoints-set-aside/` (by the run that holds the directory) and the newest
  intact one is used;
- another run's: it verifies, but describes a run that the one asked for is not
  (a refusal, `ConfigError`, raised by the caller's check).

A save that fails (a full disk, a directory made read-only or removed mid-run)
is one `CheckpointWriteError`, never orbax's or tensorstore's tracebacks: their
loggers are held while a store is open and their words kept for the one line.

orbax is imported only when a store is opened: runs without checkpoints do not
pay for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from jaxlin.runs.checkpoint_logs import HeldLogs, quiet_abandoned_reads
from jaxlin.runs.params_file import CheckpointError
from jaxlin.runs.rundir import CHECKPOINT_DIR, SET_ASIDE_DIR
from jaxlin.training.state import TrainState

DIGEST_KEY = "digest"
OLDER_RECORD_KEYS = frozenset({"config", "progress", "grid"})  # a record of jaxlin before digests


class UnreadableCheckpoint(CheckpointError):
    """The OS refuses to read a checkpoint's files (permissions, I/O): fixable, so nothing is moved."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose content does not verify: set aside, never used."""


class CheckpointWriteError(CheckpointError):
    """A save that failed (no space, a read-only or vanished directory, a lost peer); `cause` is the
    library's exception."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


class Usable(NamedTuple):
    """What `find_usable` returns: the newest checkpoint that verifies."""

    step: int
    record: dict
    state: TrainState | None  # None when only the record was asked for
    damaged: list[tuple[int, str]]  # newer checkpoints that did not verify: (step, why)


def first_line(err: BaseException, limit: int = 200) -> str:
    """orbax and tensorstore errors can run to kilobytes of spec: one line of it is enough."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "…"


def state_digest(tree) -> str:
    """sha256 of every leaf's dtype, shape and bytes, in the tree's flattening order."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype.str}{array.shape}\n".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def record_digest(record: dict) -> str:
    """sha256 of a record's canonical JSON, its digest entry left out."""
    body = {key: value for key, value in record.items() if key != DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def is_older_record(record: dict) -> bool:
    """A record written before checkpoints carried digests: it holds nothing but what those held. Any
    other record without a whole digest was changed (e.g. its digest removed to pass it off as older)."""
    return DIGEST_KEY not in record and set(record) <= OLDER_RECORD_KEYS


def _host_copy(tree):
    # A private host copy: the next compiled chunk donates (and so frees) the device buffers
    # while orbax may still be writing in the background.
    from jaxlin.runtime.devices import to_host

    return jax.tree.map(lambda x: np.array(x, copy=True), to_host(tree))


def _state_tree(state: TrainState) -> dict:
    return state.checkpoint_tree()


def check_readable(directory: Path) -> None:
    """Reads every file under `directory` once; raises UnreadableCheckpoint naming the first that
    the OS refuses (what orbax would otherwise report as a damaged checkpoint)."""
    def refuse(path, err: OSError):
        raise UnreadableCheckpoint(f"{path}: cannot read it ({err.strerror or err}); nothing was moved: fix "
                                   f"its permissions or the device and resume again") from err

    for root, _dirs, files in os.walk(directory, onerror=lambda err: refuse(err.filename, err)):
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as handle:
                    while handle.read(1 << 20):
                        pass
            except OSError as err:
                refuse(path, err)


class CheckpointStore:
    """The train states of one run directory, saved asynchronously; keeps the latest `keep`.

    `read_only` opens it to look (e.g. at the config of a run that another process may hold).
    """

    def __init__(self, run_dir: str | Path, keep: int = 3, read_only: bool = False):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.run_dir = Path(run_dir).resolve()
        self.directory = self.run_dir / CHECKPOINT_DIR
        self.saved_step: int | None = None  # the newest step known to be complete on disk
        self._pending: int | None = None  # a save started and not yet known to be complete
        self._failed: CheckpointWriteError | None = None
        self._logs = HeldLogs()
        self._logs.take()
        quiet_abandoned_reads()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
            create=not read_only, read_only=read_only, enable_async_checkpointing=True,
            # Removing a killed save's temporary directory is for the run that holds the lock only.
            cleanup_tmp_directories=not read_only)
        self._closed = False
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "record"))
            if not read_only:
                self.saved_step = self._manager.latest_step()
        except Exception as err:
            self._logs.give_back()
            raise CheckpointWriteError(f"cannot open the checkpoints in {self.directory} ({first_line(err)})",
                                       err) from err

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The saved steps, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def set_aside(self, step: int, reason: str) -> Path:
        """Moves a checkpoint that cannot be used out of orbax's sight, into `checkpoints-set-aside/`
        (never deleted: only `--overwrite` removes a run); returns where it went."""
        target_dir = self.run_dir / SET_ASIDE_DIR
        target_dir.mkdir(exist_ok=True)
        target, n = target_dir / f"{step}-{reason}", 1
        while target.exists():
            n += 1
            target = target_dir / f"{step}-{reason}-{n}"
        os.rename(self.directory / str(step), target)
        self._manager.reload()
        return target

    # Saving ---------------------------------------------------------------------------------------

    def save(self, state: TrainState, record: dict) -> None:
        """Starts writing `state` and `record` (a JSON-able dict, given the state's digest); `wait` or
        `close` finishes it. Raises CheckpointWriteError when this or an earlier save failed."""
        ocp = self._ocp
        self._raise_failed()
        tree = _host_copy(_state_tree(state))
        record = {**record, DIGEST_KEY: {"algorithm": "sha256", "state": state_digest(tree)}}
        record[DIGEST_KEY]["record"] = record_digest(record)
        try:
            self._manager.save(int(state.step), force=True, args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), record=ocp.args.JsonSave(record)))
        except Exception as err:  # the previous save's failure surfaces here too
            self._fail(self._failed_step(int(state.step)), err)
        if self._pending is not None and self._pending != int(state.step):
            self.saved_step = self._pending  # orbax finished the previous save before starting this one
        self._pending = int(state.step)

    def _failed_step(self, step: int) -> int:
        """The step whose write failed when `save(step)` raised: the background save before it, unless
        that one is complete on disk (then it is the newest good checkpoint)."""
        pending, self._pending = self._pending, None
        if pending is None or pending == step:
            return step
        if (self.directory / str(pending)).is_dir():
            return step
        return pending

    def wait(self) -> None:
        """Returns once every save started is on disk; raises CheckpointWriteError if one failed."""
        self._raise_failed()
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as err:
            self._fail(self._pending, err)
        if self._pending is not None:
            self.saved_step, self._pending = self._pending, None

    def close(self) -> None:
        """Waits for pending saves, then releases the manager (and the loggers); raises
        CheckpointWriteError if a save failed and that was not raised yet."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._failed is None:
                self.wait()
        finally:
            try:
                self._manager.close()
            except Exception:  # its failure is the save's, already reported
                pass
            self._logs.give_back()

    def _fail(self, step: int | None, err: BaseException) -> None:
        reason = _os_reason(err) or first_line(err)
        # A background save's failure surfaces at the next save: name the step whose write failed.
        written = re.search(r"/(\d+)\.orbax-checkpoint-tmp", " ".join(_chain_texts(err)))
        step = int(written.group(1)) if written else step
        self.saved_step = self._newest_on_disk()
        what = f"checkpoint {step}" if step is not None else "a checkpoint"
        self._failed = CheckpointWriteError(f"cannot write {what} in {self.directory}: {reason}", err)
        raise self._failed from err

    def _newest_on_disk(self) -> int | None:
        """The newest complete checkpoint (orbax renames a save into `<step>` only once it is whole); what
        this store last knew if the directory cannot be listed (it vanished)."""
        try:
            steps = [int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir()]
        except OSError:
            return self.saved_step
        return max(steps, default=None)

    def _raise_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    # Reading --------------------------------------------------------------------------------------

    def read_record(self, step: int) -> dict:
        """The record of `step`, checked against its digest; raises DamagedCheckpoint."""
        ocp = self._ocp
        where = self.directory / str(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
            record = restored.record
        except Exception as err:  # orbax and tensorstore raise many types for a damaged file
            raise DamagedCheckpoint(f"{where}: cannot read its run record ({first_line(err)})") from err
        if not isinstance(record, dict):
            raise DamagedCheckpoint(f"{where}: its run record is not a JSON object")
        if not is_older_record(record):
            digest = record.get(DIGEST_KEY)
            try:
                intact = (isinstance(digest.get("state"), str)
                          and digest["record"] == record_digest(record))
            except (AttributeError, TypeError, KeyError, ValueError):
                intact = False
            if not intact:
                raise DamagedCheckpoint(f"{where}: its run record was changed after it was written "
                                        f"(its digest is missing or does not match)")
        return record

    def restore(self, step: int, like: TrainState, record: dict) -> TrainState:
        """The state saved at `step`, with the structure and dtypes of `like` (host arrays), checked
        against the digest in `record`; raises DamagedCheckpoint."""
        ocp = self._ocp
        where = self.directory / str(step)
        target = _host_copy(_state_tree(like))
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
            tree = restored.state
        except Exception as err:
            raise DamagedCheckpoint(f"{where}: cannot restore its train state ({first_line(err)})") from err
        if not is_older_record(record) and state_digest(tree) != record[DIGEST_KEY]["state"]:
            raise DamagedCheckpoint(f"{where}: its train state does not match its digest (changed on disk)")
        if int(tree["step"]) != step:
            raise DamagedCheckpoint(f"{where}: holds the state of step {int(tree['step'])}")
        return type(like).from_checkpoint_tree(tree)

    def saved_shapes(self, step: int) -> list[tuple[tuple[int, ...], str]] | None:
        """(shape, dtype) of each saved array in flattening order, from orbax's metadata of the state;
        None when that cannot be read (the restore then says why)."""
        try:
            metadata = self._ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
            tree = getattr(metadata, "tree", metadata)
            leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: hasattr(x, "shape"))
            return [(tuple(leaf.shape), str(np.dtype(leaf.dtype))) for leaf in leaves]
        except Exception:
            return None

    def find_usable(self, check: Callable[[int, dict], None],
                    template: Callable[[dict], TrainState] | None = None, log=None) -> Usable:
        """The newest checkpoint whose files read, whose record verifies and passes `check(step, record)`
        (which raises ConfigError for another run's record) and, given `template(record)` (the shape of
        the state that record describes), whose state restores and verifies.

        Damaged checkpoints are skipped and listed; an unreadable one (UnreadableCheckpoint) or a
        refusal by `check` ends the search: nothing is moved here (see `set_aside_damaged`).
        """
        damaged: list[tuple[int, str]] = []
        for step in self.steps():
            check_readable(self.directory / str(step))
            try:
                record = self.read_record(step)
                if is_older_record(record) and log:
                    log(f"jaxlin: note: checkpoint {step} has no digest (written by an older jaxlin); "
                        f"it is used without being verified")
                check(step, record)
                state = None
                if template is not None:
                    like = template(record)
                    self._check_shapes(step, like)
                    state = self.restore(step, like, record)
                return Usable(step, record, state, damaged)
            except DamagedCheckpoint as err:
                damaged.append((step, str(err)))
        listed = "".join(f"; checkpoint {step}: {why}" for step, why in damaged)
        from jaxlin.config import ConfigError

        if damaged:
            raise ConfigError(f"--resume: no usable checkpoint in {self.directory}{listed}; nothing was moved")
        raise ConfigError(f"--resume: no complete checkpoint in {self.directory} (the run was stopped before its "
                          f"first one was written; start it again with --overwrite)")

    def _check_shapes(self, step: int, like: TrainState) -> None:
        """A state saved by another model or optimizer than the record names is another run's: refused
        before restoring (where it would look like damage)."""
        saved = self.saved_shapes(step)
        wanted = [(tuple(np.shape(x)), str(np.asarray(x).dtype)) for x in jax.tree_util.tree_leaves(
            _state_tree(like))]
        if saved is not None and saved != wanted:
            from jaxlin.config import ConfigError

            raise ConfigError(f"--resume: checkpoint {step} in {self.directory} holds a train state of other shapes "
                              f"than the model and optimizer its record names build ({_first_difference(saved, wanted)}"
                              f"; e.g. a model given from Python, or a MODULE:NAME model whose module has changed "
                              f"since); resume it the way it was started")

    def set_aside_damaged(self, damaged: list[tuple[int, str]], log) -> None:
        """Moves the damaged checkpoints that `find_usable` skipped aside, saying so. One that cannot be
        moved would be in the way of the resumed run's save of that step: refused before training."""
        for step, why in damaged:
            try:
                target = self.set_aside(step, "damaged")
            except OSError as err:
                raise UnreadableCheckpoint(
                    f"checkpoint {step} in {self.directory} is damaged ({why}) and could not be set aside into "
                    f"{self.run_dir / SET_ASIDE_DIR} ({err.strerror or err}); move it out of {self.directory} "
                    f"and resume again") from err
            log(f"jaxlin: checkpoint {step} is damaged and was not used ({why}); set aside as "
                f"{target.relative_to(self.run_dir)}")


def _chain_texts(err: BaseException | None) -> list[str]:
    texts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        texts.append(str(err))
        err = err.__cause__ or err.__context__
    return texts


def _os_reason(err: BaseException) -> str | None:
    """The OS's words for a failed write, wherever orbax or tensorstore put them."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
        text = str(err)
        for words in ("No space left on device", "Read-only file system", "Permission denied",
                      "No such file or directory", "Disk quota exceeded"):
            if words in text:
                return words
        if "RESOURCE_EXHAUSTED" in text:
            return "No space left on device"
        err = err.__cause__ or err.__context__
    return None


def _first_difference(saved: list[tuple], wanted: list[tuple]) -> str:
    """Where two lists of (shape, dtype) first differ, for people: "array 3 is float32(32,), the build
    makes float32(33,)", or the counts when one list is longer."""
    for index, (have, want) in enumerate(zip(saved, wanted)):
        if have != want:
            return f"array {index} is {have[1]}{have[0]}, the build makes {want[1]}{want[0]}"
    return f"{len(saved)} arrays saved, the build makes {len(wanted)}"
