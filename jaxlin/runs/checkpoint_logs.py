"""What orbax, tensorstore and absl print while checkpoints are written or read, kept off the terminal.

A failed save or a damaged checkpoint is reported by `checkpoints` as one line; the libraries'
own tracebacks and late warnings (reads abandoned on a damaged file) would bury it.
"""

from __future__ import annotations

import logging
import sys

_LOGGERS = ("absl", "orbax", "tensorstore")


def quiet_abandoned_reads() -> None:
    """A read that fails on a damaged file (a restore, orbax's metadata) leaves tensorstore reads in
    flight; when they complete, their callbacks find orbax's event loop closed and Python prints the
    "unraisable" RuntimeError, and asyncio logs their tasks' errors as never retrieved. The failure
    itself is reported as a damaged checkpoint: drop those messages, for as long as the process lives
    (they come late, even after the store is closed)."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxlin_quiet_abandoned_reads", False):
        return

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)

    hook._jaxlin_quiet_abandoned_reads = True
    sys.unraisablehook = hook
    # The same reads' asyncio tasks, collected with their DATA_LOSS error unretrieved, are logged too.
    logging.getLogger("asyncio").addFilter(_AbandonedTasks())


class _AbandonedTasks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in str(record.msg)


class HeldLogs(logging.Handler):
    """Keeps what orbax, tensorstore and absl log (tracebacks of failed background saves) off the
    user's terminal; the last error is kept for the one-line message."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.last_error: str | None = None
        self._saved: list[tuple[logging.Logger, bool, list]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.last_error = (record.getMessage().strip().splitlines() or [""])[0][:200]
        except Exception:  # a malformed log call must not break a save
            pass

    def take(self) -> None:
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.propagate, logger.handlers[:]))
            logger.handlers = [self]
            logger.propagate = False

    def give_back(self) -> None:
        for logger, propagate, handlers in self._saved:
            logger.handlers, logger.propagate = handlers, propagate
        self._saved.clear()
