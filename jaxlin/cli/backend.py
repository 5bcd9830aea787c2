"""Starting JAX for a command: its backend (one line when it cannot start) and the compilation cache, timed.

Called by a command's `run` once its settings are checked: importing this module imports no JAX.
"""

from __future__ import annotations

import argparse
import os

from jaxlin.config import ConfigError


def jax_devices() -> list:
    """JAX's devices; a backend that cannot start (JAX_PLATFORMS=tpu without a TPU) is one line."""
    import jax

    try:
        return jax.devices()
    except Exception as err:  # RuntimeError for an unknown platform, AssertionError for a missing plugin
        platforms = os.environ.get("JAX_PLATFORMS")
        where = f" (JAX_PLATFORMS={platforms})" if platforms else ""
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ConfigError(f"JAX could not start its backend{where}: {first}") from None


def start_backend(args: argparse.Namespace) -> None:
    """The compilation cache (before anything compiles) and JAX's backend, timed for the breakdown."""
    import time

    from jaxlin.runtime import compile_cache, timing

    tick = time.perf_counter()
    timing.marks["compile_cache_enabled"] = compile_cache.enable(args.no_compile_cache) is not None
    jax_devices()
    timing.marks["backend_start"] = time.perf_counter() - tick
