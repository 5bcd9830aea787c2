"""Who computes the training step's convolutions on a CPU: a fixed rule, so that the same flags give the same bits.

XLA's CPU backend (jaxlib 0.10) sends each dot and each convolution of a program, and some reductions,
to the YNNPACK library by default (its `xla_cpu_experimental_ynn_fusion_type` option). For the CNN's
training step (batch 100, Adam), YNNPACK's convolutions were measured slower than XLA's own: with
YNNPACK kept to the dots (the option set to LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT alone, given to that one
compilation, so nothing else in the process changes) the step took 14-17 ms against 22-25 ms
(bench/experiments/cnn_variants.py; bench/NOTES.md, the CNN). The option also moves reductions (a bias's
gradient) out of YNNPACK, so it would change the dense models' bits too: the rule leaves them alone.

- "xla" for a model whose step has a convolution (`chunk_form.has_convolution`), on a CPU whose XLA
  knows the option (checked once, by compiling a small program with it);
- "ynnpack" (XLA's default, no option given) otherwise, and on every other platform.

`--cpu-convolutions xla|ynnpack` overrides the rule; "auto" (the default) applies it. The resolved choice
is recorded in the run's config (never "auto"): the two differ in the last bits, so a resumed run keeps
its own. The option is experimental in XLA: where this jaxlib's XLA lacks it, "auto" resolves to
"ynnpack" (what XLA does then, whatever it is) and "xla" is refused in one line.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlin.errors import ConfigError
from jaxlin.runtime.chunk_form import CONVOLUTIONS, _has_primitive, has_convolution

CHOICES = ("auto", "xla", "ynnpack")
XLA_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.lru_cache(maxsize=1)
def option_available() -> bool:
    """Whether this jaxlib's XLA accepts the option (a small program compiled with it, once)."""
    try:
        jax.jit(jnp.dot).lower(jax.ShapeDtypeStruct((8, 8), jnp.float32),
                               jax.ShapeDtypeStruct((8, 8), jnp.float32)).compile(XLA_CONVOLUTIONS)
    except Exception:  # INVALID_ARGUMENT: no such option, or no such value, in this XLA
        return False
    return True


def rule(model, platform: str) -> str:
    """The choice "auto" resolves to (see the module docstring)."""
    if platform == "cpu" and has_convolution(model) and option_available():
        return "xla"
    return "ynnpack"


def choose(config, model, placement) -> str:
    """config.cpu_convolutions, or for "auto" the choice of `rule`; "xla" where it cannot be had is refused."""
    platform = placement.devices[0].platform
    if config.cpu_convolutions == "auto":
        return rule(model, platform)
    if config.cpu_convolutions == "xla" and platform == "cpu" and not option_available():
        raise ConfigError(f"--cpu-convolutions xla: this jaxlib ({jax.__version__}) cannot keep convolutions "
                          f"from YNNPACK; use ynnpack")
    return config.cpu_convolutions


def compiler_options(choice: str, platform: str = "cpu") -> dict:
    """The compile options of a resolved choice on `platform` (none but on a CPU)."""
    return dict(XLA_CONVOLUTIONS) if choice == "xla" and platform == "cpu" else {}


def evaluation_options(function, *args) -> dict:
    """The compile options for evaluating with `function(*args)` (traced here, on shapes): XLA's own
    convolutions when it has one and runs on a CPU, by the rule training follows. Every evaluation (during
    training, the final one, `jaxlin evaluate`, `predict`) gets them from here, so they agree bit for bit.
    Measured for the CNN's 10,000 test images: 0.45 s against 0.74 s (batches of 250 and 500 respectively,
    XLA's own against YNNPACK's convolutions; bench/NOTES.md, the CNN)."""
    leaves = [leaf for leaf in jax.tree.leaves(args) if isinstance(leaf, jax.Array)]
    try:
        platform = next(iter(leaves[0].devices())).platform if leaves else jax.default_backend()
    except Exception:  # a tracer: inside another program, whose own options apply
        return {}
    if platform != "cpu" or not option_available():
        return {}
    jaxpr = jax.make_jaxpr(function)(*args)
    return dict(XLA_CONVOLUTIONS) if _has_primitive(jaxpr.jaxpr, CONVOLUTIONS) else {}
