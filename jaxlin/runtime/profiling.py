"""`--profile [START:STOP]`: a `jax.profiler` trace of some of a run's steps, for TensorBoard's profile tab,
XProf and Perfetto.

The trace starts and stops at chunk boundaries (the loop hands the device a chunk of steps at once:
a boundary inside one would mean a chunk of another length, that is a compilation inside the trace),
so it covers the whole chunks that hold steps START to STOP. Left to itself it skips the session's
first chunk, which compiles, and traces the next `DEFAULT_CHUNKS`. The trace starts once the device has
finished the chunks before the window and ends once it has finished the window's last: it holds the
window's steps, all of them, and no others.

The trace is written under `<output dir>/profile/` as JAX writes it (`plugins/profile/<time>/` with an
`.xplane.pb`, TensorBoard's and XProf's format, and a `perfetto_trace.json.gz`): `tensorboard --logdir
<output dir>/profile` with the `xprof` package shows it in its Profile tab.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Iterable
from pathlib import Path

from jaxlin.errors import ConfigError

PROFILE_DIR = "profile"  # under the output directory
DEFAULT_CHUNKS = 3  # chunks traced by default, after the first (which compiles)
AUTO = "auto"
_STEPS = re.compile(r"(?P<start>[0-9]+):(?P<stop>[0-9]+)")


@dataclasses.dataclass(frozen=True)
class ProfileSteps:
    """The steps to trace: [start, stop), or None for both: the default window (see the module)."""

    start: int | None = None
    stop: int | None = None

    def describe(self) -> str:
        """"START:STOP", or "auto" for the default window (`flag` says it as the user gave it)."""
        return "auto" if self.start is None else f"{self.start}:{self.stop}"

    @property
    def flag(self) -> str:
        """The flag as given: `--profile` alone for the default window."""
        return "--profile" if self.start is None else f"--profile {self.start}:{self.stop}"


def parse_profile_steps(text: str | None) -> ProfileSteps | None:
    """`--profile`'s value: None (not given), "auto" (given alone) or "START:STOP" with 0 <= START < STOP;
    anything else is a ConfigError naming it."""
    if text is None:
        return None
    if text == AUTO:
        return ProfileSteps()
    match = _STEPS.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"--profile: expected START:STOP (steps, e.g. 100:300) or nothing, got {text!r}")
    start, stop = int(match["start"]), int(match["stop"])
    if start >= stop:
        raise ConfigError(f"--profile: START must be less than STOP, got {text!r}")
    return ProfileSteps(start, stop)


def traced_chunks(chunks: Iterable[tuple[int, int]], steps: ProfileSteps) -> list[tuple[int, int]]:
    """The (start, length) chunks of this session (in order) that the trace covers: those holding any step
    of [steps.start, steps.stop), or by default the `DEFAULT_CHUNKS` after the first."""
    if steps.start is None:
        return list(itertools.islice(chunks, 1, 1 + DEFAULT_CHUNKS))
    held = itertools.takewhile(lambda chunk: chunk[0] < steps.stop, chunks)
    return [(start, length) for start, length in held if start + length > steps.start]


class StepTrace:
    """Starts and stops one `jax.profiler` trace around the chunks `traced_chunks` picks (see `Loop.run`).

    `before(start, state)` is called before the chunk starting at `start` is dispatched, `after(start,
    state)` after each chunk was dispatched (`state`: its result), `close()` when the loop ends however it ends."""

    def __init__(self, directory: str | Path, steps: ProfileSteps, log=print):
        self.directory, self.steps, self.log = Path(directory), steps, log
        self.window: list[tuple[int, int]] = []
        self._lengths: dict[int, int] = {}
        self.tracing = False
        self.done = False
        self.traced_to: int | None = None  # the end of the last chunk dispatched under the trace
        self.trace_dir: Path | None = None  # where the trace was written
        self.started = 0.0
        # Wall time that tracing took from the run: starting the profiler and writing the trace out (the loop
        # leaves it out of its training time; the waits for the device at both ends are the device's
        # training, and stay in it), and the traced window's whole time.
        self.overhead_seconds = 0.0
        self.window_seconds = 0.0

    def plan(self, chunks: Iterable[tuple[int, int]], first_step: int, num_steps: int) -> None:
        """This session's chunks (from `first_step` to `num_steps`), known before the first is dispatched."""
        self.set_window(traced_chunks(chunks, self.steps))
        if not self.window:
            self.done = True
            wanted = ("after its first chunk, which compiles" if self.steps.start is None
                      else f"of steps {self.steps.start} to {self.steps.stop}")
            self.log(f"jaxlin: note: --profile: this session trains steps {first_step} to {num_steps}, no chunk "
                     f"{wanted}; no profile written")

    def set_window(self, window: list[tuple[int, int]]) -> None:
        """The (start, length) chunks to trace (`plan` picks them; the benchmark's trace its own)."""
        self.window = window
        self._lengths = dict(window)  # start -> length, looked up after every chunk in the window

    def before(self, start: int, state) -> None:
        """Before the chunk starting at `start` is dispatched (`state`: its input). The trace starts once
        the device has finished the chunks before (the loop runs ahead of the device): it holds the
        window's chunks, not the end of the one before."""
        if self.done or self.tracing or not self.window or start != self.window[0][0]:
            return
        import jax

        jax.block_until_ready(state)  # the device's own work: training time, not the trace's
        tick = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
        self.tracing, self.traced_to = True, start
        self.started = time.perf_counter()
        self.overhead_seconds += self.started - tick

    def after(self, start: int, state) -> None:
        """After the chunk starting at `start` was dispatched: the trace ends with the window's last
        chunk, once the device has finished it."""
        if not self.tracing:
            return
        self.traced_to = start + self._lengths.get(start, 0)
        if start == self.window[-1][0]:
            import jax

            jax.block_until_ready(state)  # the device's own work, as above
            self.stop()

    def stop(self) -> None:
        if not self.tracing:
            return
        import jax

        self.tracing, self.done = False, True
        tick = time.perf_counter()
        self.window_seconds = tick - self.started
        existing = set(self.directory.glob("plugins/profile/*/"))
        jax.profiler.stop_trace()
        self.overhead_seconds += time.perf_counter() - tick
        first, last = self.window[0][0], self.window[-1][0] + self.window[-1][1]
        new = sorted(set(self.directory.glob("plugins/profile/*/")) - existing)
        self.trace_dir = new[-1] if new else self.directory
        traced = [chunk for chunk in self.window if chunk[0] < (self.traced_to or first)]
        short = "" if self.traced_to == last else f"; the run stopped before step {last}"
        self.log(f"Profile of steps {first} to {self.traced_to} ({len(traced)} chunk{'s' * (len(traced) != 1)}{short}) "
                 f"in {self.trace_dir}: open it with `tensorboard --logdir {self.directory}` (pip install tensorboard "
                 f"xprof; Profile tab), or load its perfetto_trace.json.gz in Perfetto")

    def close(self) -> None:
        """Ends a trace the loop left running (a stop, a divergence): what it holds is still written."""
        self.stop()

    def record(self) -> dict | None:
        """What a run's metrics say of its trace (None: none was written): its steps, where it is, the
        traced window's wall time and what tracing took from the run."""
        if self.trace_dir is None:
            return None
        return {"first_step": self.window[0][0], "last_step": self.traced_to, "trace": str(self.trace_dir),
                "window_seconds": round(self.window_seconds, 6), "overhead_seconds": round(self.overhead_seconds, 6)}
