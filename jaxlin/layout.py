"""How the fused loop lays out a model's dots: chosen by measuring, once per shape and machine.

XLA picks the layout of a dot from its shapes. For the linear model on a CPU, the same
step written as a singleton `vmap` (params with a leading axis of 1, "batched") makes
XLA choose a layout about 1.5x faster than the plain one (bench/NOTES.md, item 11),
while for the MLP the plain one is faster. Rather than a rule per model that the next
jaxlib may break, `choose` compiles both candidates for a short probe, times them
interleaved, and keeps the faster. The two differ in summation order (by up to about
6e-7 after 1,000 steps), so the choice is recorded: in the run's config (the checkpoint
and metrics.json hold "plain" or "batched", never "auto", so a resumed run continues
with the same bits) and in a small cache file keyed by everything the choice depends
on, so later runs on the same machine skip the probe and get the same bits.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import jax

LAYOUTS = ("auto", "plain", "batched")
PROBE_STEPS = 20
PROBE_REPEATS = 3
# A model whose probe takes longer than this (compile included) is compute-bound: the layout of
# its dots matters little and measuring would cost minutes (the CNN's fused loop: 0.5 s a step).
PROBE_BUDGET_SECONDS = 2.0
MARGIN = 1.2  # "batched" must be this many times faster to be chosen
CACHE_FILE = "dot-layouts.json"
_chosen: dict[str, str] = {}  # this process's choices, by cache key


def cache_key(config, model, placement) -> str:
    import jaxlib

    device = placement.devices[0]
    return json.dumps({"jax": jax.__version__, "jaxlib": jaxlib.__version__, "platform": device.platform,
                       "device_kind": device.device_kind, "model": model.spec, "batch_size": config.batch_size,
                       "optimizer": config.optimizer, "unroll": config.unroll}, sort_keys=True)


def _cache_path() -> Path:
    from jaxlin.download import cache_dir

    return cache_dir() / CACHE_FILE


def _read_cache() -> dict:
    try:
        cached = json.loads(_cache_path().read_text())
        return cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        return {}  # missing, unreadable or damaged: measure again


def _write_cache(key: str, layout: str) -> None:
    """Adds one choice; a concurrent run's write may win, which only costs that run a probe."""
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cached = _read_cache()
        cached[key] = layout
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".dot-layouts-")
        with os.fdopen(handle, "w") as file:
            json.dump(cached, file, indent=1)
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only cache only means measuring again next time


def choose(config, model, placement, measure) -> str:
    """config.dot_layout, or for "auto" the faster of "plain" and "batched" ("plain" unless "batched"
    is `MARGIN` times faster).

    `measure(layout) -> seconds` times one probe of that layout (compiled before timing).
    Data-parallel and per-step runs use "plain": the measured gain is the single-device fused loop's.
    """
    if config.dot_layout != "auto":
        return config.dot_layout
    if config.loop != "fused" or placement.mesh is not None:
        return "plain"
    key = cache_key(config, model, placement)
    if key not in _chosen:
        cached = _read_cache().get(key)
        if cached in ("plain", "batched"):
            _chosen[key] = cached
        else:
            _chosen[key] = _measure(measure)
            _write_cache(key, _chosen[key])
    return _chosen[key]


def _measure(measure) -> str:
    best = {"plain": float("inf"), "batched": float("inf")}
    start = time.perf_counter()
    measure("plain")  # compile and warm up
    if time.perf_counter() - start > PROBE_BUDGET_SECONDS:
        return "plain"
    measure("batched")
    for _ in range(PROBE_REPEATS):
        for layout in best:
            start = time.perf_counter()
            measure(layout)
            best[layout] = min(best[layout], time.perf_counter() - start)
    # A clear margin only: a choice that noise could flip would make two machines' first runs differ
    # in their last bits for a gain not worth it (the linear model's is 1.5x).
    return "batched" if best["batched"] < best["plain"] / MARGIN else "plain"
