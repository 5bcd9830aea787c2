"""When the host wakes up: evaluation steps, step-counted checkpoints and the compiled chunks between them.

Everything here is generated lazily from the current step, so memory and set-up
time do not grow with the number of steps (a run of 10**12 steps starts at
once). A chunk from step p ends at the first of: the next evaluation, the next
checkpoint, p + steps_per_call, the last step. Since that rule only looks at p,
a run resumed at any chunk boundary walks the same chunks as one that never
stopped.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from jaxlin.config import checkpoint_interval


class StepSchedule:
    """A set of steps in [0, num_steps]: every `every` steps, or an explicit list; optionally the last."""

    def __init__(self, num_steps: int, every: int | None = None, steps: Iterable[int] | None = None,
                 include_last: bool = True):
        if (every is None) == (steps is None):
            raise ValueError("give either `every` or `steps`")
        self.num_steps, self.every, self.include_last = num_steps, every, include_last
        self.steps = None if steps is None else sorted({int(s) for s in steps if 0 <= s <= num_steps})

    def __contains__(self, step: int) -> bool:
        if not 0 <= step <= self.num_steps:
            return False
        if self.include_last and step == self.num_steps:
            return True
        if self.steps is not None:
            index = bisect.bisect_left(self.steps, step)
            return index < len(self.steps) and self.steps[index] == step
        return self.every > 0 and step % self.every == 0

    def next_after(self, step: int) -> int | None:
        """The smallest scheduled step > `step`, or None."""
        if self.steps is not None:
            index = bisect.bisect_right(self.steps, step)
            candidate = self.steps[index] if index < len(self.steps) else None
        else:
            candidate = (step // self.every + 1) * self.every if self.every > 0 else None
        if candidate is not None and candidate <= self.num_steps:
            return candidate
        return self.num_steps if self.include_last and step < self.num_steps else None


def eval_schedule(num_steps: int, eval_every: int, eval_steps: Iterable[int] | None = None) -> StepSchedule:
    """Evaluations every `eval_every` steps and after the last (or exactly at `eval_steps`)."""
    if eval_steps is not None:
        return StepSchedule(num_steps, steps=eval_steps, include_last=False)
    return StepSchedule(num_steps, every=eval_every)


def checkpoint_schedule(num_steps: int, checkpoint_every, evals: StepSchedule) -> StepSchedule:
    """The steps that are checkpointed whatever the clock, for a `checkpoint_every` setting (see
    `config.checkpoint_interval`): every N steps; never (0); at every evaluation (None, in records of an
    older jaxlin); and after the last step unless never. A duration (e.g. "5m") schedules only the last
    step here: the loop adds a checkpoint at the first boundary after each interval (`Loop.save_seconds`),
    so chunks do not depend on the clock."""
    interval = checkpoint_interval(checkpoint_every)
    if interval.never:
        return StepSchedule(num_steps, steps=[], include_last=False)
    if interval.at_evaluations:
        if evals.steps is not None:
            return StepSchedule(num_steps, steps=evals.steps)
        return StepSchedule(num_steps, every=evals.every)
    if interval.steps is not None:
        return StepSchedule(num_steps, every=interval.steps)
    return StepSchedule(num_steps, steps=[])


def chunks(start: int, num_steps: int, steps_per_call: int, *schedules: StepSchedule) -> Iterator[tuple[int, int]]:
    """(start, length) chunks covering [start, num_steps), each ending at the next scheduled step."""
    step = start
    while step < num_steps:
        end = min(step + steps_per_call, num_steps)
        for schedule in schedules:
            upcoming = schedule.next_after(step)
            if upcoming is not None:
                end = min(end, upcoming)
        yield step, end - step
        step = end
