"""Mixed precision and matmul precision for training: `--compute-dtype` and `--matmul-precision`.

Why one wrapper around the model rather than settings threaded through the trainers: the training
step, the fused chunk and the sweep's vmapped chunk all compute through `Model.apply` (or
`Model.train_apply`), so wrapping those two functions once changes what every training path
computes, for every model (the built-in ones, MODULE:NAME, Flax and Equinox adapters) alike, while
the code that evaluates keeps the model's own float32 `apply`.

bfloat16 follows what accelerator users expect of mixed precision (jmp, Flax's `dtype` against
`param_dtype`): the params, their gradients and the optimizer state stay float32, the master copy.
Only inside the loss are the floating-point params and the images cast to bfloat16, so the model's
matmuls and convolutions run in bfloat16; its logits come back to float32 before the softmax
cross-entropy, and gradients reach the float32 params through the casts (a cast's gradient is the
cast back). A model with a training mode returns updated non-trained leaves (batch-norm statistics);
they are cast back to the dtypes they came in with, so a checkpoint's structure and dtypes never
depend on the compute dtype (those leaves were computed in bfloat16, so they carry its rounding).

Evaluation (the test accuracy during training, `jaxlin evaluate`, `jaxlin predict`) stays float32,
from the float32 params and at the platform's default matmul precision: `jaxlin evaluate
run/params.npz` then gives the accuracy metrics.json recorded, whatever these settings were.

The matmul precision is a trace-time setting: the model's computation is traced inside
`jax.default_matmul_precision`, which writes the precision into each dot and convolution of the
program (their gradients' too: the transposed dots keep the forward dot's precision).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import jax
import jax.numpy as jnp

from jaxlin.config import Config
from jaxlin.models import Model

# Config.compute_dtype -> what the model computes in; float32: no casts at all.
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def is_default(config: Config) -> bool:
    """Whether `config` asks for nothing of this module (the model trains exactly as it always did)."""
    return config.compute_dtype == "float32" and config.matmul_precision == "default"


def for_training(model: Model, config: Config) -> Model:
    """`model` with `apply` (and `train_apply`, when it has one) computing in `config.compute_dtype` at
    `config.matmul_precision`, for the training step only (never for evaluation). The defaults return
    `model` itself: the same compiled programs and bits as before these settings existed."""
    if is_default(config):
        return model
    dtype = COMPUTE_DTYPES[config.compute_dtype]
    precision = None if config.matmul_precision == "default" else config.matmul_precision
    cast_in = (lambda tree: tree) if dtype is None else (lambda tree: _cast_floating(tree, dtype))
    logits_out = (lambda logits: logits) if dtype is None else (lambda logits: logits.astype(jnp.float32))

    def traced_at_precision():
        return nullcontext() if precision is None else jax.default_matmul_precision(precision)

    inner_apply, inner_train_apply = model.apply, model.train_apply

    def apply(params, images):
        with traced_at_precision():
            return logits_out(inner_apply(cast_in(params), cast_in(images)))

    train_apply: Callable | None = None
    if inner_train_apply is not None:
        def train_apply(params, images, key):
            with traced_at_precision():
                logits, new_params = inner_train_apply(cast_in(params), cast_in(images), key)
            # The leaves it updated come back in the dtypes they had: the checkpoint keeps its dtypes.
            return logits_out(logits), jax.tree.map(lambda new, old: new.astype(old.dtype), new_params, params)

    return model._replace(apply=apply, train_apply=train_apply)


def _cast_floating(tree, dtype):
    """`tree` with its floating-point leaves as `dtype`; integer, boolean and key leaves as they are."""
    def cast(x):
        floating = hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
        return x.astype(dtype) if floating else x

    return jax.tree.map(cast, tree)


def describe(config: Config) -> str:
    """The run log's words for these settings: "" at the defaults, else e.g. "; compute bfloat16
    (params float32)"."""
    parts = []
    if config.compute_dtype != "float32":
        parts.append(f"compute {config.compute_dtype} (params, gradients and optimizer float32; evaluation float32)")
    if config.matmul_precision != "default":
        parts.append(f"matmul precision {config.matmul_precision}")
    return "".join(f"; {part}" for part in parts)
