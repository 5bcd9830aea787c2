"""Pure functional models: `init(key) -> params` and `apply(params, images) -> logits`.

The linear model and the MLP are a list of dense layers, each a dict ``{"w":
(fan_in, fan_out), "b": (fan_out,)}``, differing only in sizes and initialisation;
the CNN is a dict of named layers. Nothing downstream needs to know which one it
has: params are any pytree, and a `Model` says what else is needed.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin.config import MAX_PARAMS, MODELS, is_model_reference
from jaxlin.errors import JaxlinError

# Keyed by the names `config.ACTIVATIONS` offers (tests check that they agree).
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
}


class ModelError(JaxlinError, ValueError):
    """An unknown model or activation, or a bad layer size."""


class Model(NamedTuple):
    """A model as jaxlin uses it: pure `init`/`apply`, a JSON-able description (`spec`), and what
    other code needs to know about its layers, as data set by the model's constructor.

    Nothing outside this module looks inside the params (the params file stores any pytree by its
    key paths, evaluation only calls `apply`, and the figures ask `first_dense_weights`) or asks
    which model it is: memory estimates read `activation_widths`, layout choices
    `is_single_dense_layer`, and run logs `describe()`.
    """

    name: str
    layer_sizes: tuple[int, ...]  # input, hidden..., output (the cnn: input, output)
    activation: str
    init: Callable[[jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    architecture: str  # the layers for people, e.g. "784-256-10 (relu)" or "784-conv32-conv64-256-10"
    # Per example, how many floats each layer outputs, in order, the logits last: what one batch's
    # activations hold (the cnn counts its convolutions' outputs before pooling).
    activation_widths: tuple[int, ...]
    first_layer_dense: bool  # its first layer is a dense `{"w": (inputs, units), "b"}` at params[0]
    init_uses_key: bool  # False when `init` ignores its key (the linear model starts from zeros)
    eval_batch_size: int = 10_000  # images per compiled evaluation batch (bounds activation memory)
    # Training mode, for models with dropout or non-trained state (batch-norm statistics); None for the
    # others, which train through `apply` exactly as they always have. `train_apply(params, images, key)
    # -> (logits, params)` returns the params with their non-trained leaves updated; `key` is the step's
    # dropout key (see `trainer.step_key`). `trainable(params)` is a pytree of Python bools, the structure
    # of params, saying which leaves the optimizer trains (None: the floating-point leaves); the others
    # live in params too, so checkpoints, params.npz, evaluation and predict carry them unchanged.
    train_apply: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]] | None = None
    trainable: Callable[[Any], Any] | None = None

    @property
    def spec(self) -> dict:
        return {"name": self.name, "layer_sizes": list(self.layer_sizes), "activation": self.activation}

    @property
    def is_single_dense_layer(self) -> bool:
        """One dense layer from the inputs to the logits (the linear model)."""
        return self.first_layer_dense and len(self.activation_widths) == 1

    def describe(self) -> str:
        return f"{self.name} {self.architecture}"

    def trained_mask(self, params) -> list[bool]:
        """For each leaf of params (in `jax.tree.leaves` order), whether the optimizer trains it."""
        leaves = jax.tree.leaves(params)
        floating = [jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in leaves]
        if self.trainable is not None:  # never an integer or boolean leaf: no gradient reaches it
            return [bool(m) and f for m, f in zip(jax.tree.leaves(self.trainable(params)), floating)]
        return floating

    def trained_part(self, params):
        """What the optimizer sees: params itself for a model with no training mode (so its optimizer
        state and its bits are what they always were), else the list of its trained leaves."""
        if self.train_apply is None:
            return params
        return [leaf for leaf, trained in zip(jax.tree.leaves(params), self.trained_mask(params)) if trained]

    def with_trained(self, params, trained):
        """params with its trained leaves replaced by `trained` (a list from `trained_part`)."""
        if self.train_apply is None:
            return trained
        leaves, treedef = jax.tree.flatten(params)
        fresh = iter(trained)
        return treedef.unflatten([next(fresh) if is_trained else leaf
                                  for leaf, is_trained in zip(leaves, self.trained_mask(params))])

    def first_dense_weights(self, params) -> tuple[np.ndarray, list[str]] | None:
        """The first layer's weights as images with their titles, when that layer is dense: one per
        class when it is the only layer, else one per hidden unit. None for any other params (a Flax
        or Equinox model's), whatever the model says of itself: the figure is skipped, never a crash."""
        first = params[0] if self.first_layer_dense and isinstance(params, (list, tuple)) and params else None
        if not isinstance(first, dict) or getattr(first.get("w"), "ndim", 0) != 2:
            return None
        weights = np.asarray(first["w"])
        titles = ([f"Weights: {d}" for d in range(weights.shape[1])] if self.is_single_dense_layer
                  else [f"Hidden unit {i}" for i in range(weights.shape[1])])
        return weights, titles


def _zeros_init(key, layer_sizes):
    del key
    return [
        {"w": jnp.zeros((fan_in, fan_out), jnp.float32), "b": jnp.zeros((fan_out,), jnp.float32)}
        for fan_in, fan_out in zip(layer_sizes[:-1], layer_sizes[1:])
    ]


def _he_normal(key, shape, fan_in):
    # He-normal suits ReLU; with zeros the hidden units of an MLP would never differ.
    return jax.random.normal(key, shape, jnp.float32) * jnp.sqrt(2.0 / fan_in)


def _he_init(key, layer_sizes):
    keys = jax.random.split(key, len(layer_sizes) - 1)
    return [
        {"w": _he_normal(k, (fan_in, fan_out), fan_in), "b": jnp.zeros((fan_out,), jnp.float32)}
        for k, fan_in, fan_out in zip(keys, layer_sizes[:-1], layer_sizes[1:])
    ]


def dense_apply(params, images, activation=jax.nn.relu):
    """Logits of a stack of dense layers; the activation sits between layers."""
    x = images
    for layer in params[:-1]:
        x = activation(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


# The classic MNIST CNN: two 3x3 convolutions (32, 64 channels), each followed by 2x2 max
# pooling, a dense layer of 256, the output layer.
CNN_CHANNELS, CNN_DENSE = (32, 64), 256


def _cnn_init(key, image_side: int, num_classes: int):
    keys = jax.random.split(key, 4)
    c1, c2 = CNN_CHANNELS
    flat = (image_side // 4) ** 2 * c2
    return {
        "conv1": {"w": _he_normal(keys[0], (3, 3, 1, c1), 9), "b": jnp.zeros((c1,), jnp.float32)},
        "conv2": {"w": _he_normal(keys[1], (3, 3, c1, c2), 9 * c1), "b": jnp.zeros((c2,), jnp.float32)},
        "dense": {"w": _he_normal(keys[2], (flat, CNN_DENSE), flat), "b": jnp.zeros((CNN_DENSE,), jnp.float32)},
        "out": {"w": _he_normal(keys[3], (CNN_DENSE, num_classes), CNN_DENSE),
                "b": jnp.zeros((num_classes,), jnp.float32)},
    }


def conv3x3_same(x, w):
    """A 3x3 "SAME" convolution, NHWC images and HWIO weights, stride 1.

    With one input channel it is nine shifted copies of the image times a (9, out) matrix: XLA's CPU
    convolution handles a single input channel poorly, and the matmul form (forward and, by autodiff,
    the weight gradient) was measured faster for the CNN's first layer (bench/NOTES.md, the CNN).
    Otherwise it is `lax.conv_general_dilated`, which XLA runs near the matmul rate."""
    kh, kw, channels_in, channels_out = w.shape
    if channels_in != 1 or (kh, kw) != (3, 3):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, width, _ = x.shape
    padded = jnp.pad(x[..., 0], ((0, 0), (1, 1), (1, 1)))
    shifted = jnp.stack([padded[:, i:i + h, j:j + width] for i in range(3) for j in range(3)], axis=-1)
    return (shifted.reshape(-1, 9) @ w.reshape(9, channels_out)).reshape(n, h, width, channels_out)


def _window_corners(x):
    n, h, w, c = x.shape
    windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
    return windows[:, :, 0, :, 0], windows[:, :, 0, :, 1], windows[:, :, 1, :, 0], windows[:, :, 1, :, 1]


@jax.custom_vjp
def max_pool_2x2(x):
    """2x2 max pooling with stride 2 of NHWC images (even height and width).

    Its gradient goes to the first maximum of each window (row by row), as TensorFlow's and PyTorch's
    max-pool gradients do, computed elementwise. JAX's own gradient of `lax.reduce_window` is a
    select-and-scatter that XLA's CPU backend runs slowly: with it the CNN's step took about 2.5x as
    long (bench/NOTES.md, the CNN)."""
    a, b, c, d = _window_corners(x)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _max_pool_forward(x):
    pooled = max_pool_2x2(x)
    return pooled, (x, pooled)


def _max_pool_backward(saved, grad):
    x, pooled = saved
    a, b, c, d = _window_corners(x)
    first_a = a == pooled
    first_b = (b == pooled) & ~first_a
    first_c = (c == pooled) & ~(first_a | first_b)
    first_d = ~(first_a | first_b | first_c)
    zero = jnp.zeros_like(grad)
    ga, gb, gc, gd = (jnp.where(first, grad, zero) for first in (first_a, first_b, first_c, first_d))
    windows = jnp.stack([jnp.stack([ga, gb], axis=-2), jnp.stack([gc, gd], axis=-2)], axis=2)
    return (windows.reshape(x.shape),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


def _cnn_apply(params, images, image_side: int):
    x = images.reshape(-1, image_side, image_side, 1)
    for name in ("conv1", "conv2"):
        # Pooling before the bias and ReLU gives the same values as after them (both are monotone, and
        # the bias is per channel) on a quarter of the elements; their gradients differ only where a
        # window ties, which the ReLU's zeros made common.
        x = jax.nn.relu(max_pool_2x2(conv3x3_same(x, params[name]["w"])) + params[name]["b"])
    x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["dense"]["w"] + params["dense"]["b"])
    return x @ params["out"]["w"] + params["out"]["b"]


def get_model(
    name: str,
    hidden_sizes: Sequence[int] = (256,),
    activation: str = "relu",
    input_size: int = 784,
    num_classes: int = 10,
    image_shape: tuple[int, int, int] | None = None,
) -> Model:
    """The model called `name`: "linear" (the tutorial, zeros), "mlp", "cnn", or a user's own as
    MODULE:NAME (see `user_model`). `image_shape` (H, W, C), when given, is the data's and sets
    `input_size`; otherwise a square single-channel image of `input_size` values is assumed."""
    if image_shape is not None:
        image_shape = tuple(int(d) for d in image_shape)
        input_size = math.prod(image_shape)
    if is_model_reference(name):
        if image_shape is None:
            side = math.isqrt(input_size)
            image_shape = (side, side, 1) if side * side == input_size else (input_size, 1, 1)
        return user_model(name, image_shape, num_classes)
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if activation not in ACTIVATIONS:
        raise ModelError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    hidden = tuple(int(h) for h in hidden_sizes) if name == "mlp" else ()
    if name == "mlp" and not hidden:
        raise ModelError("an mlp needs at least one hidden layer")
    if any(h < 1 for h in hidden) or input_size < 1 or num_classes < 1:
        raise ModelError(f"layer sizes must be at least 1, got {[input_size, *hidden, num_classes]}")
    layer_sizes = (input_size, *hidden, num_classes)
    if name == "cnn":
        side = math.isqrt(input_size)
        if side * side != input_size or side % 4:
            raise ModelError(f"the cnn needs square images with a side divisible by 4, not {input_size} values")
        c1, c2 = CNN_CHANNELS
        return Model("cnn", layer_sizes, "relu", init=lambda key: _cnn_init(key, side, num_classes),
                     apply=lambda params, images: _cnn_apply(params, images, side),
                     architecture=f"{input_size}-conv{c1}-conv{c2}-{CNN_DENSE}-{num_classes}",
                     activation_widths=(side * side * c1, (side // 2) ** 2 * c2, CNN_DENSE, num_classes),
                     first_layer_dense=False, init_uses_key=True, eval_batch_size=250)
    init_fn = _zeros_init if name == "linear" else _he_init
    act = ACTIVATIONS[activation]
    return Model(
        name=name,
        layer_sizes=layer_sizes,
        activation=activation if name == "mlp" else "none",
        init=lambda key: init_fn(key, layer_sizes),
        apply=lambda params, images: dense_apply(params, images, act),
        architecture="-".join(str(s) for s in layer_sizes) + (f" ({activation})" if hidden else ""),
        activation_widths=layer_sizes[1:],
        first_layer_dense=True,
        init_uses_key=name != "linear",
    )


SPEC_FIELDS = ("name", "layer_sizes", "activation")


def _brief(value) -> str:
    """A value from a file, shown in an error message without filling the screen."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def model_from_spec(spec, input_size: int = 784, num_classes: int = 10,
                    image_shape: tuple[int, int, int] | None = None) -> Model:
    """The model a params file describes, checked against the data it is meant for.

    The description comes from a file, so every field is checked for its type before it is
    used: a wrong one is a ModelError, never a TypeError."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ModelError("the model description is not an object with a name")
    unknown = [key for key in spec if key not in SPEC_FIELDS]
    if unknown:
        raise ModelError(f"the model description has unknown fields ({_brief(unknown)})")
    name = spec["name"]
    if is_model_reference(name):  # a user's model is rebuilt from its reference; its module says the rest
        try:
            model = get_model(name, input_size=input_size, num_classes=num_classes, image_shape=image_shape)
        except JaxlinError as err:  # the user gave no --model here: the params file named it
            flag = f"--model {name}"
            if not str(err).startswith(flag):
                raise
            raise type(err)(f"the params' model {name}{str(err)[len(flag):]}") from err
        if spec.get("layer_sizes") != list(model.layer_sizes):
            raise ModelError(f"the params are of {name} for {_brief(spec.get('layer_sizes'))} (inputs, classes); "
                             f"these images and classes make {list(model.layer_sizes)}")
        return model
    if name not in MODELS:
        raise ModelError(f"unknown model {_brief(name)}; choose one of {', '.join(MODELS)}")
    activation = spec.get("activation", "relu")
    if not isinstance(activation, str):
        raise ModelError(f"the model description's activation is not a name ({_brief(activation)})")
    sizes = spec.get("layer_sizes")
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(type(s) is int and s >= 1 for s in sizes):
        raise ModelError(f"the model description has no valid layer sizes ({_brief(sizes)})")
    if name in ("linear", "cnn") and len(sizes) != 2:
        raise ModelError(f"a {name} model has no hidden layers, the description lists {_brief(sizes)}")
    if sizes[0] != input_size:
        raise ModelError(f"the params take inputs of {_brief(sizes[0])} values; these images have {input_size}")
    if sizes[-1] != num_classes:
        raise ModelError(f"the params predict {_brief(sizes[-1])} classes; this data set has {num_classes}")
    num_params = sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))
    if name == "mlp" and num_params > MAX_PARAMS:
        raise ModelError(f"the model description's layer sizes make {num_params:,} params, more than any model "
                         f"here ({MAX_PARAMS:,})")
    return get_model(name, hidden_sizes=sizes[1:-1], activation=activation if name == "mlp" else "relu",
                     input_size=input_size, num_classes=num_classes)


def _import_reference(reference: str):
    """The object MODULE:NAME names; MODULE is imported from the current directory or PYTHONPATH."""
    from jaxlin.references import import_reference  # shared with --optimizer

    return import_reference(reference, "--model", ModelError)


def _has_init_and_apply(candidate) -> bool:
    return callable(getattr(candidate, "init", None)) and callable(getattr(candidate, "apply", None)) \
        and not isinstance(candidate, type)


def _build_candidate(found, reference: str, image_shape: tuple[int, int, int], num_classes: int):
    """What MODULE:NAME names, as an object with init and apply: a Flax or Equinox module wrapped by
    `adapters`, an object with init and apply as it is, or what a factory returns given the data's shape."""
    from jaxlin import adapters

    adapted = adapters.adapt(found, reference, image_shape, num_classes)
    if adapted is not None:
        return adapted
    if isinstance(found, Model) or _has_init_and_apply(found):
        return found
    if not callable(found):
        return None
    try:
        made = found(image_shape=image_shape, num_classes=num_classes)
    except Exception as err:
        raise ModelError(f"--model {reference}: calling it with image_shape={image_shape} and "
                         f"num_classes={num_classes} failed: {type(err).__name__}: {err}") from err
    adapted = adapters.adapt(made, reference, image_shape, num_classes)
    return adapted if adapted is not None else made


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def user_model(reference: str, image_shape: tuple[int, int, int], num_classes: int) -> Model:
    """A user's model, MODULE:NAME: an object with `init(key) -> params` and `apply(params, images) ->
    logits` (images float32 [batch, H*W*C] in [0, 1]), or a callable (a class, a factory) that returns
    one when called with `image_shape=(H, W, C)` and `num_classes=K`; or a Flax linen or nnx module or
    an Equinox module (a class or an instance), wrapped by `jaxlin.adapters`. An object may also have
    `train_apply(params, images, key) -> (logits, params)` and `trainable(params)` (see `Model`) for
    dropout and non-trained state. Its spec is its reference, so checkpoints and params files rebuild
    it by importing it again.

    Checked before anything runs (traced with `jax.eval_shape`): the logits of `apply` (and of
    `train_apply`, which returns a pair) must be one floating-point array [batch, num_classes]; params
    with integer or boolean leaves (a permutation, a counter) train with those leaves kept as they are
    (`keeping_fixed_leaves`)."""
    return as_model(_import_reference(reference), reference, image_shape, num_classes)


def as_model(found, reference: str, image_shape: tuple[int, int, int], num_classes: int) -> Model:
    """`found` (what a reference names, or an object given from Python: see `user_model`) as a checked
    `Model` named `reference`, built for images of `image_shape` and `num_classes` classes."""
    if isinstance(found, Model):
        return found
    candidate = _build_candidate(found, reference, image_shape, num_classes)
    if not _has_init_and_apply(candidate) and not isinstance(candidate, Model):
        raise ModelError(f"--model {reference}: not a model: expected an object with init(key) and "
                         f"apply(params, images), a Flax or Equinox module, or a callable that returns one "
                         f"given image_shape and num_classes")
    input_size = math.prod(image_shape)
    train_apply, trainable = getattr(candidate, "train_apply", None), getattr(candidate, "trainable", None)
    images = jax.ShapeDtypeStruct((2, input_size), jnp.float32)
    try:
        params = jax.eval_shape(candidate.init, jax.random.key(0))
        logits = jax.eval_shape(candidate.apply, params, images)
        if train_apply is not None:
            trained = jax.eval_shape(train_apply, params, images, jax.random.key(0))
    except Exception as err:
        raise ModelError(f"--model {reference}: its init and apply do not run on images of {input_size} values: "
                         f"{_first_line(err)}") from err
    _check_logits(f"--model {reference}: apply", logits, num_classes)
    if not any(jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in jax.tree.leaves(params)):
        # It would "train" to the chance accuracy of its fixed logits, looking like a run that did not learn.
        raise ModelError(f"--model {reference}: its init returns no floating-point arrays: nothing to train")
    if train_apply is not None:
        if not isinstance(trained, (tuple, list)) or len(trained) != 2:
            raise ModelError(f"--model {reference}: train_apply returns {_shown(trained)}; expected a pair "
                             f"(logits, params)")
        _check_logits(f"--model {reference}: train_apply", trained[0], num_classes)
        if _shapes(trained[1]) != _shapes(params):
            raise ModelError(f"--model {reference}: train_apply must return (logits, params) with params of the "
                             f"structure, shapes and dtypes init returns")
    dense = _dense_widths(params, input_size)
    model = Model(reference, (input_size, num_classes), "none", init=candidate.init, apply=candidate.apply,
                  architecture=f"{input_size}-...-{num_classes} (your model)",
                  activation_widths=dense or (num_classes,), first_layer_dense=bool(dense), init_uses_key=True,
                  train_apply=train_apply, trainable=trainable)
    return keeping_fixed_leaves(model, params)


def _shapes(tree):
    """A pytree's structure with each leaf's shape and dtype: what must match for a params pytree to
    stand in for another."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(tuple(getattr(leaf, "shape", ())), str(getattr(leaf, "dtype", type(leaf).__name__)))
                     for leaf in leaves]


def _shown(value) -> str:
    """What a model's function returned (traced), for an error message: "float32[2, 10]", "a tuple of 2"."""
    if isinstance(value, jax.ShapeDtypeStruct):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _check_logits(what: str, logits, num_classes: int) -> None:
    """Refuses anything but one floating-point array of shape (2, num_classes): the logits of 2 images."""
    if (not isinstance(logits, jax.ShapeDtypeStruct) or not jnp.issubdtype(logits.dtype, jnp.floating)
            or tuple(logits.shape) != (2, num_classes)):
        raise ModelError(f"{what} returns {_shown(logits)} for 2 images; expected (2, {num_classes}) logits: one "
                         f"floating-point array [batch, classes]")


def has_fixed_leaves(params) -> bool:
    """Whether params (arrays or their shapes) hold a leaf no gradient can reach: integers, booleans."""
    return any(not jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in jax.tree.leaves(params))


def keeping_fixed_leaves(model: Model, params=None) -> Model:
    """`model`, trained through the trained-part path (`Model.train_apply`) when its params hold integer or
    boolean leaves (a permutation, a counter) and it has no training mode of its own: gradients and the
    optimizer then see only its floating-point leaves, and the others stay as they are. Any other model is
    returned as it is (the built-in models: their compiled programs do not change). `params`: its params'
    shapes, when known."""
    if model.train_apply is not None:
        return model
    if params is None:
        params = jax.eval_shape(model.init, jax.random.key(0))
    if not has_fixed_leaves(params):
        return model
    apply = model.apply

    def train_apply(params, images, key):
        del key  # no dropout: the params' fixed leaves come back unchanged
        return apply(params, images), params

    return model._replace(train_apply=train_apply)


def check_fits_data(model: Model, input_size: int, num_classes: int) -> None:
    """Refuses, in one ModelError, a model whose logits are not [batch, num_classes] on images of
    `input_size` values (traced with `jax.eval_shape`, computing nothing)."""
    inputs, classes = model.layer_sizes[0], model.layer_sizes[-1]
    mismatch = (f"the model {model.name} takes {inputs} inputs and predicts {classes} classes; this data has "
                f"{input_size} inputs and {num_classes} classes (build it with get_model({model.name!r}, ..., "
                f"image_shape=data.image_shape, num_classes=data.num_classes))")
    if (inputs, classes) != (input_size, num_classes):
        raise ModelError(mismatch)
    try:
        params = jax.eval_shape(model.init, jax.random.key(0))
        logits = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((2, input_size), jnp.float32))
    except Exception as err:
        raise ModelError(f"the model {model.name}: its init and apply do not run on this data's images of "
                         f"{input_size} values: {_first_line(err)}") from err
    _check_logits(f"the model {model.name}: apply", logits, num_classes)


def _dense_widths(params, input_size: int) -> tuple[int, ...]:
    """The output widths of params laid out as jaxlin's dense layers ([{"w": (in, out), "b"}, ...] from the
    inputs), else () (other layouts: the figures and layout rules then treat the model as not dense)."""
    if not isinstance(params, (list, tuple)) or not params:
        return ()
    widths, fan_in = [], input_size
    for layer in params:
        w = layer.get("w") if isinstance(layer, dict) else None
        if w is None or len(w.shape) != 2 or w.shape[0] != fan_in:
            return ()
        widths.append(int(w.shape[1]))
        fan_in = int(w.shape[1])
    return tuple(widths)
