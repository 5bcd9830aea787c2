"""Stopping on SIGINT and SIGTERM between compiled chunks, not inside them.

Before training starts (imports, a download, loading the data) the first signal
stops the run at once: the handler raises `StopNow`, and the code on the way
out removes what it was writing (a partial download, say). Once training starts
(`defer`), a compiled chunk cannot be interrupted, and an exception in the
middle of the host loop could leave a half-written record. So from then on the
first signal only sets a flag that the training loop checks after each chunk: it
then checkpoints and the run exits with 128 + the signal's number (130 for
Ctrl-C, 143 for SIGTERM from `timeout`, Slurm or `docker stop`). The handler
also restores the signal's default action, so a second signal ends the process
at once, even while a chunk is running. The flag is set in both modes, so a
`StopNow` that some library swallows is still seen where training starts.
"""

from __future__ import annotations

import contextlib
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopNow(KeyboardInterrupt):
    """A stop requested before training started: nothing is lost by stopping at once."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _quiet_on_stop(previous_hook):
    """An `unraisablehook` that drops a `StopNow` raised inside a callback that cannot raise (JAX's
    garbage-collector hook): Python would print its traceback and go on; the stop flag is set all
    the same and acted on where the code checks it, so the user sees only the one-line stop."""

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, StopNow):
            previous_hook(unraisable)

    return hook


@contextlib.contextmanager
def quiet_swallowed_stops():
    """While active, a swallowed `StopNow` prints nothing (see `_quiet_on_stop`)."""
    previous = sys.unraisablehook
    sys.unraisablehook = _quiet_on_stop(previous)
    try:
        yield
    finally:
        sys.unraisablehook = previous


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM stop the run at once (`StopNow`) until `defer`
    is called, then at the next chunk boundary."""

    def __init__(self, log=None, repeat_exits: bool = True, raise_now: bool = True):
        self.signum: int | None = None
        # False while modules are imported: an exception raised inside an extension module's
        # initialisation can crash the interpreter, so the stop waits for `raise_pending`.
        self.raise_now = raise_now
        self.repeat_exits = repeat_exits  # False under a parent that owns "a second signal" (supervise.py)
        self.deferred = False
        self._log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self._previous: dict[int, object] = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def raise_pending(self) -> None:
        """From now on (imports done) a signal stops the run at once; one that came already does now."""
        self.raise_now = True
        if self.signum is not None and not self.deferred:
            raise StopNow(self.signum)

    def defer(self) -> None:
        """From now on a signal waits for the end of the current chunk."""
        self.deferred = True

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if not self.deferred:
            if self.raise_now:
                raise StopNow(signum)
            return
        if self.repeat_exits:
            for other in STOP_SIGNALS:
                signal.signal(other, signal.SIG_DFL)
        self._log(f"jaxlin: {signal.Signals(signum).name}: stopping after the current chunk "
                  f"(send it again to exit at once)")

    def __enter__(self) -> StopRequest:
        self._previous_unraisable = sys.unraisablehook
        sys.unraisablehook = _quiet_on_stop(self._previous_unraisable)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def reinstall(self) -> None:
        """Takes the signals back from a library that installed its own handler (JAX's distributed
        runtime catches SIGTERM for its preemption notifier)."""
        if self.signum is None:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = self._previous_unraisable
