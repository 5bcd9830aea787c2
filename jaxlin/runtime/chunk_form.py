"""How the fused loop runs a chunk of steps: a fixed rule, so that the same flags give the same bits.

The fused loop trains many steps per call on device-resident data. It has two forms:

- "scan": the chunk is one compiled program, a `lax.scan` over its steps. This is what makes
  the small dense models fast (one dispatch per chunk instead of one per step: the linear
  model's fused loop is about 4x the TensorFlow reference, bench/NOTES.md).
- "host-loop": one compiled step (the same body, gathering its batch on the device, with no
  loop around it), called once per step from the host. Each call costs a dispatch (tens of
  microseconds), nothing else.

XLA's CPU backend runs a convolution inside a loop body (a `while`, which `lax.scan` becomes)
several times slower than the same convolution in a program of its own: the CNN's step took
about 0.5 s inside a scan of 8 steps and about 0.03 s outside one, whether the scan was
called once or once per step (`bench/experiments/chunk_forms.py`; bench/NOTES.md, the CNN).
Fully unrolling the scan avoids it too, but compiles a copy of the step per step. So:

- "host-loop" for a model whose training step has a convolution, in the fused loop, on a CPU;
- "scan" otherwise: dense models everywhere, and every model on GPUs, where convolutions in
  loops run at full speed.

`--chunk-form scan|host-loop` overrides the rule; "auto" (the default) applies it. The resolved
form is recorded in the run's config (never "auto"), so a resumed run keeps its bits even if this
rule changes: the two forms may differ in the last bits, as XLA fuses a loop body differently.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr

FORMS = ("auto", "scan", "host-loop")
CONVOLUTIONS = frozenset({"conv_general_dilated"})


def _subjaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


def _has_primitive(jaxpr, names: frozenset) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names or any(_has_primitive(sub, names) for sub in _subjaxprs(eqn.params)):
            return True
    return False


@functools.lru_cache(maxsize=64)
def _model_has_convolution(model) -> bool:
    params = jax.eval_shape(model.init, jax.random.key(0))
    images = jax.ShapeDtypeStruct((2, model.layer_sizes[0]), jnp.float32)
    try:
        jaxpr = jax.make_jaxpr(model.apply)(params, images)
    except Exception:  # a model that cannot be traced here is refused elsewhere, by name
        return False
    return _has_primitive(jaxpr.jaxpr, CONVOLUTIONS)


def has_convolution(model) -> bool:
    """Whether the model's forward pass (its `apply`, traced on shapes) holds a convolution, at any depth
    (inside `jit`, `custom_vjp`, `remat`, a Flax or Equinox module)."""
    try:
        return _model_has_convolution(model)
    except TypeError:  # a model that cannot be hashed: traced each time
        return _model_has_convolution.__wrapped__(model)


def rule(model, loop: str, platform: str) -> str:
    """The form "auto" resolves to (see the module docstring)."""
    if loop == "fused" and platform == "cpu" and has_convolution(model):
        return "host-loop"
    return "scan"


def choose(config, model, placement) -> str:
    """config.chunk_form, or for "auto" the form of `rule` for this model, loop and platform."""
    if config.chunk_form != "auto":
        return config.chunk_form
    return rule(model, config.loop, placement.devices[0].platform)


class HostLoopChunk:
    """A chunk of `num_steps` steps run as `num_steps` calls of `step`, a compiled one-step chunk, with the
    call signature and results of a compiled chunk of that length: (*carry, ..., offset, [start_step, ...])
    -> (*carry, losses[num_steps, ...]).

    `offset_at` is the position of the batch order's offset among the arguments (step i reads the window at
    offset + i * batch_size); `start_at`, when not None, that of the chunk's first global step (step i gets
    start_step + i). The first `num_carry` arguments are the state the steps carry (donated by `step`)."""

    def __init__(self, step, num_carry: int, offset_at: int, start_at: int | None, batch_size: int,
                 num_steps: int):
        self.step, self.num_carry, self.offset_at, self.start_at = step, num_carry, offset_at, start_at
        self.batch_size, self.num_steps = batch_size, num_steps

    def __call__(self, *args):
        args = list(args)
        offset = args[self.offset_at]
        start = args[self.start_at] if self.start_at is not None else None
        losses = []
        for i in range(self.num_steps):
            args[self.offset_at] = offset + i * self.batch_size
            if start is not None:
                args[self.start_at] = type(start)(start + i)
            *carry, loss = self.step(*args)
            args[:self.num_carry] = carry
            losses.append(loss)
        return (*args[:self.num_carry], losses[0] if len(losses) == 1 else jnp.concatenate(losses))
