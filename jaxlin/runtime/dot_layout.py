"""How the fused loop lays out a model's dots: a fixed rule, so that the same flags give the same bits.

XLA picks the layout of a dot from its shapes. For the linear model on a CPU, the same
step written as a singleton `vmap` (params with a leading axis of 1, "batched") makes
XLA choose a layout about 1.3-1.5x faster than the plain one, while for the MLP the
plain one is faster (bench/NOTES.md, item 11; bench/experiments/vmap_singleton.py).
The two layouts differ in summation order, so their params differ in the last bits
(by up to about 6e-7 after 1,000 steps).

jaxlin used to choose by timing both layouts once per shape and machine and caching
the winner. That made the bits of a run depend on a measurement: with the cache
missing or damaged, three runs with the same flags chose differently. The layout is
now a function of the model, the loop, the devices and the platform only:

- "batched" for a model that is a single dense layer (the tutorial's linear model),
  trained by the fused loop on one CPU device, where it was measured to win (1.33-1.37x
  at batch 100 with sgd, momentum and adam; 1.15x at batch 1,000);
- "plain" otherwise: the MLP (0.87x batched at batch 100), the CNN (compute-bound),
  data-parallel and per-step runs, and GPUs, where the singleton vmap was never measured.

`--dot-layout plain|batched` overrides the rule; "auto" (the default) applies it. The
resolved layout is recorded in the run's config (checkpoints and metrics.json hold
"plain" or "batched", never "auto"), so a resumed run keeps its bits even if this rule
changes in a later version.
"""

from __future__ import annotations

LAYOUTS = ("auto", "plain", "batched")


def is_single_dense_layer(model) -> bool:
    """The model is one dense layer (inputs to logits): the linear model."""
    return model.is_single_dense_layer


def rule(model, loop: str, num_devices: int, platform: str) -> str:
    """The layout "auto" resolves to (see the module docstring)."""
    if loop == "fused" and num_devices == 1 and platform == "cpu" and is_single_dense_layer(model):
        return "batched"
    return "plain"


def choose(config, model, placement) -> str:
    """config.dot_layout, or for "auto" the layout of `rule` for this model, loop and placement."""
    if config.dot_layout != "auto":
        return config.dot_layout
    devices = placement.devices
    return rule(model, config.loop, 1 if placement.mesh is None else len(devices), devices[0].platform)
