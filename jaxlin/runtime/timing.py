"""Where a run's time goes, counted from the start of its process (the breakdown in metrics.json).

The start is the kernel's (`/proc/self/stat`), so interpreter start-up and imports are
included; elsewhere the first import of this module stands in for it.
"""

from __future__ import annotations

import contextlib
import os
import time

_IMPORTED = time.time()


class Marks(dict):
    """Phase -> seconds (or a flag such as "compile_cache_enabled"), set where the phase happens (the
    command line, the run) and read into metrics.json. One per process (`marks`); `start_command`
    empties it when `main` starts a command, so that a second in-process call of `main` reports its
    own phases, not the first one's."""

    def start_command(self) -> None:
        self.clear()

    def add(self, name: str, seconds: float) -> None:
        """Adds `seconds` to phase `name` (a phase that happens many times: checkpoint saves)."""
        self[name] = self.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str):
        """Times the block into phase `name` (added to what it already holds)."""
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - tick)


marks = Marks()


def _process_start() -> float:
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            up = float(uptime.read().split()[0])
        return time.time() - (up - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


PROCESS_START = _process_start()


def since_process_start() -> float:
    return max(0.0, time.time() - PROCESS_START)
