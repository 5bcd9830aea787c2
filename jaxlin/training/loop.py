"""The one host loop of every kind of run: chunks, evaluations, checkpoints and stop requests.

A single model (`trainer.Trainer`) and a sweep (`sweep.SweepTrainer`) both implement
`ChunkTrainer`: run a compiled chunk, take its losses (a single run raises on divergence, a
sweep freezes the member), evaluate into a record's fields. `Loop` drives either: the host
walks over the chunks of `schedule.chunks` (they end at evaluations and checkpoints), checks
between them whether every process agreed to stop, and reports records and checkpoints to its
`LoopHooks` (a run directory's, see `runs.session`, or none, for `trainer.fit`).

Losses are summed per model in float64 on the host between evaluations: a record's
`train_loss` is the mean over the steps since the previous evaluation, and a checkpoint carries
these sums (`Progress`), so a run resumed between two evaluations reports the same numbers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

import numpy as np

from jaxlin.config import Config
from jaxlin.runtime.devices import to_host
from jaxlin.training.schedule import StepSchedule, chunks


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands between evaluations: what a checkpoint must carry beside the train state
    so that a resumed run reports the same `train_loss` and elapsed time. A single model's sums are
    numbers, a sweep's are lists (one per member)."""

    loss_sum: float | list[float] = 0.0  # sum of the step losses since the previous evaluation (float64)
    loss_count: int | list[int] = 0
    elapsed_seconds: float = 0.0  # wall time of the run so far, over all its sessions

    @classmethod
    def zero(cls, num_models: int | None) -> Progress:
        """A fresh run's: one model (None) or `num_models` members."""
        if num_models is None:
            return cls()
        return cls([0.0] * num_models, [0] * num_models)


class ChunkTrainer(Protocol):
    """What `Loop` asks of a compiled trainer."""

    config: Config  # as trained (the dot layout resolved)
    compile_seconds: float

    def run_chunk(self, state: Any, num_steps: int) -> tuple[Any, Any]:
        """`num_steps` updates from `state.step`: the new state and the losses (on the device)."""

    def take_losses(self, losses: np.ndarray, start_step: int, state: Any, report) -> tuple[np.ndarray, np.ndarray]:
        """The host losses of the chunk that started at `start_step` and ended in `state`: the
        sums and counts to add per model; raises (a single run's divergence) or reports with
        `report(line)` (a sweep's frozen member)."""

    def saved_state(self, state: Any) -> Any:
        """What a checkpoint of `state` holds (`place` turns it back into a state on the devices)."""

    def evaluate(self, state: Any) -> dict:
        """The accuracy fields of an evaluation record of `state`."""

    def postfix(self, losses: np.ndarray, evaluation: dict | None) -> dict:
        """What the progress bar shows after a chunk ({}: leave it as it is)."""


class LoopHooks:
    """What `Loop` reports to its caller and asks of it; these defaults record nothing and never stop."""

    checkpoints = False  # whether `save` keeps anything, so that checkpoints are scheduled
    last_recorded_step: int | None = None  # a resumed run does not evaluate its first step twice

    def on_start(self, config: Config) -> None:
        """The run's config as training starts, with what the trainer resolved (the dot layout)."""

    def on_evaluation(self, record: dict) -> None:
        """record: step, the trainer's accuracy fields, train_loss (mean since the previous
        evaluation), elapsed_seconds."""

    def save(self, state, progress: Progress, wait: bool = False) -> None:
        """Checkpoint `state` (on the device; copy what you keep); `wait`: return only once it is on disk."""

    def should_stop(self) -> bool:
        return False

    def report(self, line: str) -> None:
        """A line for the user (a sweep member that diverged)."""


def _means(loss_sum: np.ndarray, loss_count: np.ndarray):
    """Mean loss per model since the previous evaluation, None where no step was counted."""
    if loss_sum.ndim == 0:
        return float(loss_sum) / int(loss_count) if loss_count else None
    return [s / c if c else None for s, c in zip(loss_sum.tolist(), loss_count.tolist())]


class Loop:
    """The host loop of one session of a run."""

    def __init__(self, trainer: ChunkTrainer, evals: StepSchedule, saves: StepSchedule, hooks: LoopHooks,
                 progress: Progress, fresh: bool = True):
        self.trainer, self.evals, self.saves, self.hooks, self.fresh = trainer, evals, saves, hooks, fresh
        self.loss_sum = np.array(progress.loss_sum, np.float64)
        self.loss_count = np.array(progress.loss_count, np.int64)
        self.elapsed_before, self.started = progress.elapsed_seconds, time.perf_counter()
        self.evaluations: list[dict] = []  # this session's records
        self.train_seconds = self.eval_seconds = 0.0
        self.steps_trained = 0

    def progress(self) -> Progress:
        return Progress(self.loss_sum.tolist(), self.loss_count.tolist(),
                        self.elapsed_before + time.perf_counter() - self.started)

    def _reset_losses(self) -> None:
        self.loss_sum[...] = 0
        self.loss_count[...] = 0

    def evaluate(self, state) -> dict:
        tick = time.perf_counter()
        fields = self.trainer.evaluate(state)
        self.eval_seconds += time.perf_counter() - tick
        record = {"step": state.step, **fields, "train_loss": _means(self.loss_sum, self.loss_count),
                  "elapsed_seconds": round(self.progress().elapsed_seconds, 3)}
        self._reset_losses()
        self.evaluations.append(record)
        self.hooks.on_evaluation(record)
        return fields

    def timings(self) -> dict:
        train = self.train_seconds
        return {"compile_seconds": self.trainer.compile_seconds, "train_seconds": train,
                "eval_seconds": self.eval_seconds,
                "steps_per_second": self.steps_trained / train if train > 0 else None}

    def run(self, state, show_progress: bool):
        from tqdm.auto import tqdm

        config, hooks = self.trainer.config, self.hooks
        hooks.on_start(config)
        saved_at = None if self.fresh else state.step  # a resumed run's first state is its checkpoint
        if self.fresh and hooks.checkpoints:
            # A fresh run's first checkpoint is on disk before anything else is recorded: whatever
            # kills the run later, `--resume` has a state to start from.
            hooks.save(state, self.progress(), wait=True)
            saved_at = state.step
        if state.step in self.evals:
            if hooks.last_recorded_step == state.step:  # resumed after this step's evaluation: its window closed
                self._reset_losses()
            else:
                self.evaluate(state)
        bar = tqdm(total=config.num_steps, initial=state.step, disable=not show_progress, unit="step", leave=False)
        with bar:
            for start, length in chunks(state.step, config.num_steps, config.steps_per_call, self.evals, self.saves):
                if hooks.should_stop():
                    # A stop that came after the last chunk's save check (during its evaluation, say)
                    # still leaves the state it stops at on disk.
                    if hooks.checkpoints and saved_at != state.step:
                        hooks.save(state, self.progress())
                    break
                tick, compiled_before = time.perf_counter(), self.trainer.compile_seconds
                state, losses = self.trainer.run_chunk(state, length)
                losses = to_host(losses)
                self.train_seconds += time.perf_counter() - tick - (self.trainer.compile_seconds - compiled_before)
                self.steps_trained += length
                sums, counts = self.trainer.take_losses(losses, start, state, hooks.report)
                self.loss_sum += sums
                self.loss_count += counts
                # Save before evaluating: the checkpoint's progress holds the losses since the previous
                # evaluation, so a run resumed here can still record this step's evaluation.
                if state.step in self.saves or (hooks.checkpoints and hooks.should_stop()):
                    hooks.save(state, self.progress())
                    saved_at = state.step
                evaluation = self.evaluate(state) if state.step in self.evals else None
                shown = self.trainer.postfix(losses, evaluation)
                if shown:
                    bar.set_postfix(shown, refresh=False)
                bar.update(length)
        return state
