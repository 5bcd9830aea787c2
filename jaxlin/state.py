"""The train state and its checkpoints.

`TrainState` is everything a run needs to go on: params, optimizer state and
the step (the batch order follows from seed and step, see `sampler`).
`CheckpointStore` keeps it in `<output dir>/checkpoints/` through orbax's
`CheckpointManager`: each save is written to a temporary directory and renamed
into place when complete (a crash mid-save leaves nothing that looks like a
checkpoint; orbax removes the leftovers on the next start), only the latest N
are kept, and the same API later saves sharded arrays across hosts. Beside the
state each checkpoint holds a JSON record of the run's config and progress, so
`--resume` can refuse a config that would not continue the same run.

orbax is imported only when a store is opened: runs without checkpoints do not
pay for it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxlin.checkpoint import CheckpointError

CHECKPOINT_DIR = "checkpoints"


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: int


def _first_line(err: Exception, limit: int = 200) -> str:
    """orbax and tensorstore errors can run to kilobytes of spec: one line of it is enough."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "…"


def _host_copy(tree):
    # A private host copy: the next compiled chunk donates (and so frees) the device buffers
    # while orbax may still be writing in the background.
    from jaxlin.parallel import to_host

    return jax.tree.map(lambda x: np.array(x, copy=True), to_host(tree))


class CheckpointStore:
    """The train states of one run directory, saved asynchronously; keeps the latest `keep`.

    `read_only` opens it to look (e.g. at the config of a run that another process may hold).
    """

    def __init__(self, run_dir: str | Path, keep: int = 3, read_only: bool = False):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(run_dir).resolve() / CHECKPOINT_DIR
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
            create=not read_only, read_only=read_only, enable_async_checkpointing=True,
            # Removing a killed save's temporary directory is for the run that holds the lock only.
            cleanup_tmp_directories=not read_only)
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        if read_only:  # orbax warns that a read-only directory is read-only
            absl_logger.setLevel(logging.ERROR)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "record"))
        finally:
            absl_logger.setLevel(level)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The saved steps, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def remove(self, step: int) -> None:
        """Removes a damaged checkpoint (which orbax may not be able to read, so not through orbax)."""
        shutil.rmtree(self.directory / str(step), ignore_errors=True)
        self._manager.reload()

    def save(self, state: TrainState, record: dict) -> None:
        """Starts writing `state` and `record` (a JSON-able dict); `wait` or `close` finishes it."""
        ocp = self._ocp
        tree = {"params": state.params, "opt_state": state.opt_state, "step": np.int64(state.step)}
        self._manager.save(int(state.step), force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_host_copy(tree)), record=ocp.args.JsonSave(record)))

    def read_record(self, step: int) -> dict:
        ocp = self._ocp
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
        except Exception as err:  # orbax and tensorstore raise many types for a damaged file
            raise CheckpointError(f"{self.directory / str(step)}: cannot read the run record ({_first_line(err)})") \
                from err
        if not isinstance(restored.record, dict):
            raise CheckpointError(f"{self.directory / str(step)}: the run record is not a JSON object")
        return restored.record

    def restore(self, step: int, like: TrainState) -> TrainState:
        """The state saved at `step`, with the structure and dtypes of `like` (host arrays)."""
        ocp = self._ocp
        target = _host_copy({"params": like.params, "opt_state": like.opt_state, "step": np.int64(0)})
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))
        except Exception as err:
            raise CheckpointError(f"{self.directory / str(step)}: cannot restore the train state "
                                  f"({_first_line(err)})") from err
        tree = restored.state
        return TrainState(tree["params"], tree["opt_state"], int(tree["step"]))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        self._manager.close()
