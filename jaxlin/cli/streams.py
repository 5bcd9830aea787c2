"""The `jaxlin` command's stdout and stderr: closed, broken or narrow streams do not end a run.

`STREAMS.guard()` (called by the console script, not by in-process calls of `main`) makes a closed
stream /dev/null and drops writes to a pipe whose reader left; `replace_unencodable` writes characters
the streams' encoding lacks as backslash escapes.
"""

from __future__ import annotations

import os
import sys


def replace_unencodable() -> None:
    """Characters the streams' encoding lacks (`PYTHONIOENCODING=ascii`, a C locale) are written as
    backslash escapes instead of raising UnicodeEncodeError: messages name paths, which may hold any."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream.errors == "strict":
                stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # None, or a stream that cannot change
            pass


class _DropWhenGone:
    """stdout or stderr whose reader went away (`jaxlin train | head -1`): a write to it would raise
    BrokenPipeError in the middle of the run. From the first one on, what is written there is dropped,
    as most Unix tools do, and the run goes on to write its outputs and exits with its own code."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        # Python's documented recipe: the descriptor now leads to /dev/null, so what is still buffered
        # and everything written later go nowhere, without an error (nor one at exit).
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass


class StreamGuard:
    """Whether this process's stdout and stderr are guarded, and the guarding.

    One per process (`STREAMS`): `on` is set by the console script's first `guard()` and never unset,
    since it describes the process's streams, not one call of `main`. A supervised child replaces
    Python's streams (supervise.route_runtime_output) and guards the new ones only when `on`, so that
    in-process calls of `main` (tests) keep the streams they were given."""

    def __init__(self):
        self.on = False

    def guard(self) -> None:
        """stdout and stderr that are closed (`jaxlin train >&-`) or whose reader goes away do not end
        the run: a closed one becomes /dev/null (and its descriptor is taken, so that no file opened
        later gets it), and writes to a broken pipe are dropped."""
        self.on = True
        for fd, name in ((1, "stdout"), (2, "stderr")):
            if getattr(sys, name) is None:  # Python found the descriptor closed when it started
                try:
                    os.fstat(fd)
                except OSError:
                    null = os.open(os.devnull, os.O_WRONLY)
                    if null != fd:
                        os.dup2(null, fd)
                        os.close(null)
                setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
            stream = getattr(sys, name)
            if not isinstance(stream, _DropWhenGone):
                setattr(sys, name, _DropWhenGone(stream))


STREAMS = StreamGuard()
