"""JAX's persistent compilation cache, kept under jaxlin's cache directory and on by default.

A `jaxlin train` run compiles the same few programs every time (the fused chunk, the
evaluation, the sampler's shuffle); XLA's CPU compile of them took 1.7 s of a 6 s run.
JAX can keep compiled executables on disk (`jax_compilation_cache_dir`); by default it
only stores programs that took over a second to compile, so jaxlin lowers both limits
to cache all of its programs. JAX writes each entry to a temporary file and renames it,
so concurrent runs are safe; an entry that cannot be read (damaged, or from another
jaxlib) is compiled again and rewritten, with a warning that jaxlin silences.

Off with `--no-compile-cache` or `JAXLIN_COMPILE_CACHE=0`. Hits and misses are counted
through `jax.monitoring`, for the time breakdown in metrics.json (see `_Counts`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

ENV = "JAXLIN_COMPILE_CACHE"
SUBDIR = "xla"


class _Counts:
    """The cache's hits and misses since the last `enable` (one per command run, before it compiles).

    JAX keeps an event listener for the rest of the process, so it is registered once (`listening`);
    `enable` zeroes the counts, so that a second run in the same process (an in-process call of
    `main`) reports its own hits and misses, not the sum."""

    def __init__(self):
        self.hits = self.misses = 0
        self.listening = False

    def reset(self) -> None:
        self.hits = self.misses = 0

    def count(self, event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.hits += 1
        elif event == "/jax/compilation_cache/cache_misses":
            self.misses += 1


_COUNTS = _Counts()


def directory() -> Path:
    from jaxlin.data.download import cache_dir

    return cache_dir() / SUBDIR


def wanted(flag_off: bool = False) -> bool:
    return not flag_off and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def enable(flag_off: bool = False) -> Path | None:
    """Turns the cache on (unless switched off); returns its directory, or None when off."""
    import jax

    _listen()
    _COUNTS.reset()
    if not wanted(flag_off):
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = directory()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache only means compiling as before
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    warnings.filterwarnings("ignore", message="Error reading persistent compilation cache entry")
    warnings.filterwarnings("ignore", message="Error writing persistent compilation cache entry")
    return path


def _listen() -> None:
    if _COUNTS.listening:
        return
    import jax

    jax.monitoring.register_event_listener(_COUNTS.count)
    _COUNTS.listening = True


def counts() -> dict[str, int]:
    """Cache hits and misses since the cache was last enabled (this run's)."""
    return {"hits": _COUNTS.hits, "misses": _COUNTS.misses}
