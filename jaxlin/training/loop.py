"""The one host loop of every kind of run: chunks, evaluations, checkpoints and stop requests.

A single model (`trainer.Trainer`) and a sweep (`sweep.SweepTrainer`) both implement
`ChunkTrainer`: run a compiled chunk, take its losses (a single run raises on divergence, a
sweep freezes the member), evaluate into a record's fields. `Loop` drives either: the host
walks over the chunks of `schedule.chunks` (they end at evaluations and step-counted
checkpoints), asks at each boundary whether every process agreed to stop or to take a timed
checkpoint, and reports records and checkpoints to its `LoopHooks` (a run directory's, see
`runs.session`, or none, for `trainer.fit`).

The device never waits for the host: at a boundary the host dispatches what needs the state
there (an evaluation, a device copy of the state for a checkpoint) and the next chunk, and only
then reads the previous chunk's losses, the evaluation's result and writes the checkpoint, while
the next chunk runs. The numbers are those of the same steps done one after the other: the
evaluation reads the state of its step, the checkpoint holds it, and a chunk whose losses are
not finite still stops the run (naming the step) before anything of the chunk after it is kept.

Losses are summed per model in float64 on the host between evaluations: a record's
`train_loss` is the mean over the steps since the previous evaluation, and a checkpoint carries
these sums (`Progress`), so a run resumed between two evaluations reports the same numbers.
"""

from __future__ import annotations

import contextlib
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
        """`num_steps` updates from `state.step`: the new state and the losses (on the device). It may
        donate `state`'s buffers: anything the host reads of `state` later must be dispatched first."""

    def keep(self, state: Any) -> Any:
        """What `take_losses` reads of the state a chunk ended in, kept on the device before the next
        chunk (which may donate that state) is dispatched."""

    def take_losses(self, losses: np.ndarray, start_step: int, state: Any, report) -> tuple[np.ndarray, np.ndarray]:
        """The host losses of the chunk that started at `start_step` and ended in `state` (as `keep`
        returned it): the sums and counts to add per model; raises (a single run's divergence) or
        reports with `report(line)` (a sweep's frozen member)."""

    def saved_state(self, state: Any) -> Any:
        """What a checkpoint of `state` holds (`place` turns it back into a state on the devices)."""

    def start_evaluation(self, state: Any) -> Any:
        """Dispatches the evaluation of `state` (asynchronously); `finish_evaluation` reads it."""

    def finish_evaluation(self, started: Any) -> dict:
        """The accuracy fields of an evaluation record, from what `start_evaluation` returned."""

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
        """Checkpoint `state` (on the device; copy what you keep before returning: a chunk dispatched
        later may donate its buffers); `wait`: return only once it is on disk."""

    def wait_for_saves(self) -> None:
        """Returns once every save started is on disk."""

    def should_stop(self) -> bool:
        return False

    def poll(self, save_due: bool) -> tuple[bool, bool]:
        """Asked at every chunk boundary: (stop here, save here), as every process of the run agrees;
        `save_due` is whether this process's clock says a timed checkpoint is due."""
        return self.should_stop(), save_due

    def report(self, line: str) -> None:
        """A line for the user (a sweep member that diverged)."""


def _means(loss_sum: np.ndarray, loss_count: np.ndarray):
    """Mean loss per model since the previous evaluation, None where no step was counted."""
    if loss_sum.ndim == 0:
        return float(loss_sum) / int(loss_count) if loss_count else None
    return [s / c if c else None for s, c in zip(loss_sum.tolist(), loss_count.tolist())]


def device_copy(state):
    """A copy of `state`'s device arrays (dispatched, not waited for): what a checkpoint writes while
    the next chunk, which donates the state's own buffers, runs."""
    import jax

    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)


@dataclasses.dataclass
class _Boundary:
    """A dispatched chunk whose results the host has not read yet, and what was dispatched at its end."""

    start: int
    length: int
    losses: Any  # on the device
    kept: Any  # `ChunkTrainer.keep` of the state it ended in
    evaluation: Any = None  # `start_evaluation`'s, when its end is an evaluation step
    snapshot: Any = None  # `device_copy` of the state it ended in, when a checkpoint is written there


class _LazyBar:
    """A tqdm bar made when first updated, so that no line printed before it runs into it."""

    def __init__(self, make):
        self._make, self._bar = make, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()

    def _get(self):
        if self._bar is None:
            self._bar = self._make()
        return self._bar

    def set_postfix(self, shown: dict, refresh: bool = False) -> None:
        self._get().set_postfix(shown, refresh=refresh)

    def update(self, steps: int) -> None:
        self._get().update(steps)


@contextlib.contextmanager
def _closing(trace):
    """Ends a profile trace however the loop ends (its trace is written with what it holds)."""
    try:
        yield
    finally:
        if trace is not None:
            trace.close()


class Loop:
    """The host loop of one session of a run.

    `save_seconds`: a timed checkpoint at the first boundary after that much wall time since the
    last save (None: checkpoints only at the steps of `saves`)."""

    def __init__(self, trainer: ChunkTrainer, evals: StepSchedule, saves: StepSchedule, hooks: LoopHooks,
                 progress: Progress, fresh: bool = True, save_seconds: float | None = None, trace=None):
        self.trainer, self.evals, self.saves, self.hooks, self.fresh = trainer, evals, saves, hooks, fresh
        self.save_seconds = save_seconds
        self.trace = trace  # a `profiling.StepTrace` (--profile), or None
        self.loss_sum = np.array(progress.loss_sum, np.float64)
        self.loss_count = np.array(progress.loss_count, np.int64)
        self.elapsed_before, self.started = progress.elapsed_seconds, time.perf_counter()
        self.evaluations: list[dict] = []  # this session's records
        self.train_seconds = self.eval_seconds = self.checkpoint_seconds = 0.0
        self.steps_trained = 0
        self.saved_at: int | None = None  # the step of the latest checkpoint
        self._last_save = time.monotonic()

    def progress(self) -> Progress:
        return Progress(self.loss_sum.tolist(), self.loss_count.tolist(),
                        self.elapsed_before + time.perf_counter() - self.started)

    def _reset_losses(self) -> None:
        self.loss_sum[...] = 0
        self.loss_count[...] = 0

    def _start_evaluation(self, state):
        tick = time.perf_counter()
        started = self.trainer.start_evaluation(state)
        self.eval_seconds += time.perf_counter() - tick
        return started

    def _record(self, step: int, started) -> dict:
        """The evaluation record of `step` from `started` (its losses all taken): logged and reported."""
        tick = time.perf_counter()
        fields = self.trainer.finish_evaluation(started)
        record = {"step": step, **fields, "train_loss": _means(self.loss_sum, self.loss_count),
                  "elapsed_seconds": round(self.progress().elapsed_seconds, 3)}
        self._reset_losses()
        self.evaluations.append(record)
        self.hooks.on_evaluation(record)
        self.eval_seconds += time.perf_counter() - tick
        return fields

    def evaluate(self, state) -> dict:
        """Records the evaluation of `state` now."""
        return self._record(state.step, self._start_evaluation(state))

    def _record_first(self, step: int, started) -> None:
        """The first step's record, once the first checkpoint is on disk (see `run`)."""
        if self.fresh and self.hooks.checkpoints:
            tick = time.perf_counter()
            wait = getattr(self.hooks, "wait_for_saves", None)  # hooks written before it: saved at once
            if wait is not None:
                wait()
            self.checkpoint_seconds += time.perf_counter() - tick
        self._record(step, started)

    def _save(self, state, wait: bool = False) -> None:
        tick = time.perf_counter()
        self.hooks.save(state, self.progress(), wait=wait)
        self.saved_at, self._last_save = state.step, time.monotonic()
        self.checkpoint_seconds += time.perf_counter() - tick

    def timings(self) -> dict:
        train = self.train_seconds
        found = {"compile_seconds": self.trainer.compile_seconds, "train_seconds": train,
                 "eval_seconds": self.eval_seconds, "checkpoint_seconds": self.checkpoint_seconds,
                 "steps_per_second": self.steps_trained / train if train > 0 and self.steps_trained else None}
        if self.trace is not None and self.trace.record() is not None:
            found["profile_seconds"] = self.trace.overhead_seconds  # not in train_seconds
        return found

    def _poll(self) -> tuple[bool, bool]:
        """(stop, save) at this boundary; hooks written before `LoopHooks.poll` (any object with the
        other methods) are asked `should_stop` only."""
        due = self._timed_save_due()
        poll = getattr(self.hooks, "poll", None)
        return poll(due) if poll is not None else (self.hooks.should_stop(), due)

    def _timed_save_due(self) -> bool:
        return (self.hooks.checkpoints and self.save_seconds is not None
                and time.monotonic() - self._last_save >= self.save_seconds)

    def _dispatch_boundary(self, boundary: _Boundary, state, save: bool, last: bool = False) -> None:
        """At the end of `boundary`'s chunk (`state`), before the next chunk is dispatched: the
        evaluation of this step and the copy that its checkpoint writes (none after the `last` chunk:
        nothing donates that state)."""
        if state.step in self.evals:
            boundary.evaluation = self._start_evaluation(state)
        if save and self.hooks.checkpoints:
            tick = time.perf_counter()
            boundary.snapshot = state if last else device_copy(state)
            self.checkpoint_seconds += time.perf_counter() - tick

    def _finish(self, boundary: _Boundary, bar: _LazyBar) -> None:
        """The host's part of a chunk, while the next one runs: its losses (a divergence raises here,
        before its state is saved or evaluated), its checkpoint, then its evaluation record."""
        losses = to_host(boundary.losses)
        sums, counts = self.trainer.take_losses(losses, boundary.start, boundary.kept, self.hooks.report)
        self.loss_sum += sums
        self.loss_count += counts
        step = boundary.start + boundary.length
        # Save before recording the evaluation: the checkpoint's progress holds the losses since the
        # previous evaluation, so a run resumed here can still record this step's evaluation.
        if boundary.snapshot is not None:
            self._save(boundary.snapshot)
        evaluation = self._record(step, boundary.evaluation) if boundary.evaluation is not None else None
        shown = self.trainer.postfix(losses, evaluation)
        if shown:
            bar.set_postfix(shown, refresh=False)
        bar.update(boundary.length)

    def run(self, state, show_progress: bool):
        from tqdm.auto import tqdm

        config, hooks = self.trainer.config, self.hooks
        hooks.on_start(config)
        self.saved_at = None if self.fresh else state.step  # a resumed run's first state is its checkpoint
        if self.fresh and hooks.checkpoints:
            # A fresh run's first checkpoint is on disk before anything else is recorded (whatever kills
            # the run later, `--resume` has a state to start from); it is written while the first chunk
            # compiles, and waited for before the first record.
            self._save(state)
        initial = None  # the evaluation of the first step, recorded once that checkpoint is on disk
        if state.step in self.evals:
            if hooks.last_recorded_step == state.step:  # resumed after this step's evaluation: its window closed
                self._reset_losses()
            else:
                initial = (state.step, self._start_evaluation(state))
        # Shown from the first chunk's end: the first step's record (its line) comes before it.
        first_step = state.step  # read now: `state` moves on before the bar is made
        bar = _LazyBar(lambda: tqdm(total=config.num_steps, initial=first_step, disable=not show_progress,
                                    unit="step", leave=False))
        pending: _Boundary | None = None  # the chunk dispatched last
        loop_started = time.perf_counter()
        accounted = self.eval_seconds + self.checkpoint_seconds + self.trainer.compile_seconds
        stopped = False
        schedule = (state.step, config.num_steps, config.steps_per_call, self.evals, self.saves)
        trace = self.trace
        if trace is not None:
            trace.plan(chunks(*schedule), state.step, config.num_steps)
        with bar, _closing(trace):
            for start, length in chunks(*schedule):
                stopped, save_due = self._poll()
                if pending is not None:
                    self._dispatch_boundary(pending, state, stopped or save_due or state.step in self.saves)
                if stopped:
                    break
                if trace is not None:
                    trace.before(start, state)
                new_state, losses = self.trainer.run_chunk(state, length)  # runs while the host reads the last one
                if trace is not None:
                    trace.after(start, new_state)
                self.steps_trained += length
                if initial is not None:
                    self._record_first(*initial)
                    initial = None
                if pending is not None:
                    self._finish(pending, bar)
                state, pending = new_state, _Boundary(start, length, losses, self.trainer.keep(new_state))
            if initial is not None:  # no chunk ran
                self._record_first(*initial)
            if pending is not None:
                if not stopped:  # the last step: its evaluation and checkpoint
                    self._dispatch_boundary(pending, state, state.step in self.saves, last=True)
                self._finish(pending, bar)
        # The loop's wall time less what the host spent on evaluations, checkpoints and compiling in it, and
        # on a profile's waits for the device and writing its trace out.
        spent = self.eval_seconds + self.checkpoint_seconds + self.trainer.compile_seconds - accounted
        if trace is not None:
            spent += trace.overhead_seconds
        self.train_seconds += time.perf_counter() - loop_started - spent
        return state
