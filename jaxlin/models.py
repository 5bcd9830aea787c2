"""Pure functional models: `init(key) -> params` and `apply(params, images) -> logits`.

Params are a list of dense layers, each a dict ``{"w": (fan_in, fan_out), "b":
(fan_out,)}``, so the linear model and an MLP differ only in layer sizes and
initialisation; nothing downstream needs to know which one it has.
"""

from __future__ import annotations

from typing import NamedTuple
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxlin.config import MODELS

# Keyed by the names `config.ACTIVATIONS` offers (tests check that they agree).
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
}


class ModelError(ValueError):
    """An unknown model or activation, or a bad layer size."""


class Model(NamedTuple):
    name: str
    layer_sizes: tuple[int, ...]  # input, hidden..., output
    activation: str
    init: Callable[[jax.Array], list]
    apply: Callable[[list, jax.Array], jax.Array]

    def describe(self) -> str:
        sizes = "-".join(str(s) for s in self.layer_sizes)
        return f"{self.name} {sizes}" + (f" ({self.activation})" if self.name == "mlp" else "")


def _zeros_init(key, layer_sizes):
    del key
    return [
        {"w": jnp.zeros((fan_in, fan_out), jnp.float32), "b": jnp.zeros((fan_out,), jnp.float32)}
        for fan_in, fan_out in zip(layer_sizes[:-1], layer_sizes[1:])
    ]


def _he_init(key, layer_sizes):
    # He-normal suits ReLU; with zeros the hidden units of an MLP would never differ.
    keys = jax.random.split(key, len(layer_sizes) - 1)
    return [
        {
            "w": jax.random.normal(k, (fan_in, fan_out), jnp.float32) * jnp.sqrt(2.0 / fan_in),
            "b": jnp.zeros((fan_out,), jnp.float32),
        }
        for k, fan_in, fan_out in zip(keys, layer_sizes[:-1], layer_sizes[1:])
    ]


def dense_apply(params, images, activation=jax.nn.relu):
    """Logits of a stack of dense layers; the activation sits between layers."""
    x = images
    for layer in params[:-1]:
        x = activation(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def get_model(
    name: str,
    hidden_sizes: Sequence[int] = (256,),
    activation: str = "relu",
    input_size: int = 784,
    num_classes: int = 10,
) -> Model:
    """The model called `name`: "linear" (the tutorial, zeros) or "mlp"."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if activation not in ACTIVATIONS:
        raise ModelError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    hidden = tuple(int(h) for h in hidden_sizes) if name == "mlp" else ()
    if name == "mlp" and not hidden:
        raise ModelError("an mlp needs at least one hidden layer")
    if any(h < 1 for h in hidden):
        raise ModelError(f"hidden sizes must be at least 1, got {list(hidden)}")
    layer_sizes = (input_size, *hidden, num_classes)
    init_fn = _zeros_init if name == "linear" else _he_init
    act = ACTIVATIONS[activation]
    return Model(
        name=name,
        layer_sizes=layer_sizes,
        activation=activation if name == "mlp" else "none",
        init=lambda key: init_fn(key, layer_sizes),
        apply=lambda params, images: dense_apply(params, images, act),
    )
