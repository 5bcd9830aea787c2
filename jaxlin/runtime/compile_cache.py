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

A command turns it on (`enable`) before it compiles. From Python, jaxlin's training (`fit`,
`train_and_evaluate`, `run_sweep`) turns it on the first time it runs (`enable_by_default`),
unless the user has a say: `JAXLIN_COMPILE_CACHE=0`, or JAX's own cache configured
(`jax_compilation_cache_dir` set, say by `JAX_COMPILATION_CACHE_DIR`, or
`jax_enable_compilation_cache` turned off), which jaxlin then leaves as it is.
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
_decided = False  # whether this process's cache was set up, on or off, by a command or by default


def directory() -> Path:
    from jaxlin.data.download import cache_dir

    return cache_dir() / SUBDIR


def wanted(flag_off: bool = False) -> bool:
    return not flag_off and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def enable(flag_off: bool = False) -> Path | None:
    """Turns the cache on (unless switched off); returns its directory, or None when off."""
    global _decided
    import jax

    _listen()
    _COUNTS.reset()
    _decided = True
    if not wanted(flag_off):
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = directory()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache only means compiling as before
    jax.config.update("jax_enable_compilation_cache", True)
    _use_directory(path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    warnings.filterwarnings("ignore", message="Error reading persistent compilation cache entry")
    warnings.filterwarnings("ignore", message="Error writing persistent compilation cache entry")
    return path


def enable_by_default() -> Path | None:
    """The cache for a library user, called by jaxlin's training before it compiles: on as for a command
    (see `enable`), once per process, unless a command already set it up (on or off), JAXLIN_COMPILE_CACHE
    says no, or the user configured JAX's own cache (a directory set, or the cache turned off), which
    stays theirs. Returns the directory jaxlin turned on, else None."""
    global _decided
    if _decided:
        return None
    import jax

    _decided = True
    if jax.config.jax_compilation_cache_dir or not jax.config.jax_enable_compilation_cache or not wanted():
        return None
    return enable()


def _use_directory(path: Path) -> None:
    """Points JAX's cache at path. JAX opens its cache once, at the first compile after a directory is set;
    a command run again in the same process with another cache directory (tests, notebooks) gets that
    directory, not the one opened first, so the cache is reopened when the directory changes."""
    import jax

    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(path))
    if before and before != str(path):
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()


def _listen() -> None:
    if _COUNTS.listening:
        return
    import jax

    jax.monitoring.register_event_listener(_COUNTS.count)
    _COUNTS.listening = True


def counts() -> dict[str, int]:
    """Cache hits and misses since the cache was last enabled (this run's)."""
    return {"hits": _COUNTS.hits, "misses": _COUNTS.misses}
