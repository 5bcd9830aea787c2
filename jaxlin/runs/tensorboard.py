"""`--tensorboard`: a run's evaluation records as TensorBoard event files, written as the records are.

Every record that goes to `metrics.jsonl` also goes, flushed at once, to an event file under
`<output dir>/tensorboard/` (a sweep: one folder per member, named by its settings, so that
TensorBoard overlays the members), so `tensorboard --logdir <output dir>/tensorboard` follows a
running job. The scalars are the record's accuracy (`accuracy/test`, a sweep's
`accuracy/validation`), its mean training loss (`loss/train`), the learning rate the schedule
gives at that step (`learning_rate`) and the steps per second since the previous record
(`steps_per_second`, wall time: evaluations and checkpoints included). An event's wall time is the
run's start plus the record's `elapsed_seconds`, so TensorBoard's "relative" axis is the run's own
training time, across resumes too.

The files are written with tensorboardX's synchronous `EventsWriter` (no TensorFlow, no writer
thread: a record is on disk when `write` returns). A session starts a new event file holding the
records it keeps (a resumed run's, up to its checkpoint) and then removes the older event files:
records after that checkpoint are dropped from `metrics.jsonl` on resume, so they are dropped here
too, and the curves continue without a step twice. The event files hold nothing that
`metrics.jsonl` does not, which is why they may be rewritten.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from jaxlin.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"  # under the output directory
EVENT_FILE_MARK = ".out.tfevents."  # in the name of every event file (TensorBoard reads files named so)
INSTALL_HINT = "pip install 'jaxlin[tensorboard]' (or pip install tensorboardX)"


def require_writer() -> None:
    """Refuses `--tensorboard` in one line, before anything runs, where tensorboardX is missing."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"--tensorboard needs the tensorboardX package, which is not installed ({err}); "
                          f"{INSTALL_HINT}") from None


def is_event_file(name: str) -> bool:
    return EVENT_FILE_MARK in name


@dataclasses.dataclass(frozen=True)
class Curve:
    """One TensorBoard run: `name` is its folder under tensorboard/ ("" for the folder itself),
    `accuracy` the record's accuracy field, `member` the index into a sweep record's lists (None:
    the record's fields are numbers), `learning_rate` a number or a function of the step."""

    name: str
    accuracy: str
    member: int | None = None
    learning_rate: float | Callable | None = None

    def value(self, record: dict, field: str):
        value = record[field]
        return value[self.member] if self.member is not None else value

    def scalars(self, record: dict, previous: dict | None) -> dict[str, float]:
        """The scalars of `record` (None values, a diverged member's, are left out)."""
        kind = self.accuracy.removesuffix("_accuracy")
        found = {f"accuracy/{kind}": self.value(record, self.accuracy),
                 "loss/train": self.value(record, "train_loss")}
        if self.learning_rate is not None:
            rate = self.learning_rate
            found["learning_rate"] = float(rate(record["step"]) if callable(rate) else rate)
        if previous is not None and record["elapsed_seconds"] > previous["elapsed_seconds"]:
            found["steps_per_second"] = ((record["step"] - previous["step"])
                                         / (record["elapsed_seconds"] - previous["elapsed_seconds"]))
        return {tag: float(value) for tag, value in found.items() if value is not None}


class EventLog:
    """The event files of one session of a run (see the module's docstring). Use `write` for each new
    record and `close` at the end."""

    def __init__(self, directory: str | os.PathLike, curves: list[Curve], kept: list[dict], elapsed_now: float,
                 log=print):
        from tensorboardX.event_file_writer import EventsWriter

        self.directory, self.curves = Path(directory), curves
        # The run's start on the wall clock: an event's time is this plus its record's elapsed time.
        self.started = time.time() - elapsed_now
        self.writers, self.previous = {}, None
        suffix = f".jaxlin-{os.getpid()}-{time.monotonic_ns()}"  # unique: two sessions within a second
        older = []
        for curve in curves:
            folder = self.directory / curve.name
            folder.mkdir(parents=True, exist_ok=True)
            older += [path for path in folder.iterdir() if is_event_file(path.name) and path.is_file()]
            self.writers[curve.name] = EventsWriter(str(folder / "events"), suffix)
        for record in kept:
            self._add(record)
        self._flush()
        for path in older:  # the run's earlier sessions' files: their kept records are in the new ones now
            try:
                path.unlink(missing_ok=True)
            except OSError as err:  # the run goes on; the next session tries again
                log(f"jaxlin: note: cannot remove the earlier event file {path} ({err.strerror or err}); "
                    f"TensorBoard shows its steps twice until it is removed")

    def write(self, record: dict) -> None:
        """One new record, on disk when this returns."""
        self._add(record)
        self._flush()

    def _add(self, record: dict) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        wall_time = self.started + record["elapsed_seconds"]
        for curve in self.curves:
            values = [Summary.Value(tag=tag, simple_value=value)
                      for tag, value in curve.scalars(record, self.previous).items()]
            event = Event(wall_time=wall_time, step=record["step"], summary=Summary(value=values))
            self.writers[curve.name].write_event(event)
        self.previous = record

    def _flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def member_name(index: int, num_members: int, settings: dict) -> str:
    """A sweep member's folder: its index (zero-padded, so folders sort as members do) and the settings
    that tell it apart, e.g. "03_learning_rate=0.1,seed=2"."""
    width = len(str(max(num_members - 1, 0)))
    shown = ",".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in settings.items())
    return f"{index:0{width}d}" + (f"_{shown}" if shown else "")
