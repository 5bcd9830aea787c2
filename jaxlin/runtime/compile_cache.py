"""JAX's persistent compilation cache, kept under jaxlin's cache directory and on by default.

A `jaxlin train` run compiles the same few programs every time (the fused chunk, the
evaluation, the sampler's shuffle); XLA's CPU compile of them took 1.7 s of a 6 s run.
JAX can keep compiled executables on disk (`jax_compilation_cache_dir`); by default it
only stores programs that took over a second to compile, so jaxlin lowers both limits
to cache all of its programs. JAX writes each entry to a temporary file and renames it,
so concurrent runs are safe; an entry that cannot be read (damaged, or from another
jaxlib) is compiled again and rewritten, with a warning that jaxlin silences.

Off with `--no-compile-cache` or `JAXLIN_COMPILE_CACHE=0`. Hits and misses are counted
through `jax.monitoring`, for the time breakdown in metrics.json.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

ENV = "JAXLIN_COMPILE_CACHE"
SUBDIR = "xla"
_counts = {"hits": 0, "misses": 0}
_listening = False


def directory() -> Path:
    from jaxlin.data.download import cache_dir

    return cache_dir() / SUBDIR


def wanted(flag_off: bool = False) -> bool:
    return not flag_off and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def enable(flag_off: bool = False) -> Path | None:
    """Turns the cache on (unless switched off); returns its directory, or None when off."""
    import jax

    _listen()
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
    global _listening
    if _listening:
        return
    import jax

    def count(event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            _counts["hits"] += 1
        elif event == "/jax/compilation_cache/cache_misses":
            _counts["misses"] += 1

    jax.monitoring.register_event_listener(count)
    _listening = True


def counts() -> dict[str, int]:
    """Cache hits and misses of this process so far."""
    return dict(_counts)
