"""Flax (linen and nnx) and Equinox modules as jaxlin models: `--model mymodule:MyFlaxCNN` just works.

`adapt` recognises a module (a class or an instance) of one of these libraries and wraps it in an
object with jaxlin's model protocol (`models.Model`): `init(key) -> params`, `apply(params, images) ->
logits` in evaluation mode, and, when the module has dropout or non-trained state, `train_apply(params,
images, key) -> (logits, params)` in training mode with `trainable(params)` saying which leaves the
optimizer trains. The libraries are imported only when the user's module already did (they are looked
up in `sys.modules`), so `import jaxlin` and the built-in models never import them.

Params are plain nested dicts of arrays, so checkpoints, params.npz, evaluate and predict carry them
with no change of format: ``{"params": <trained leaves>, <other collections>: <non-trained leaves>}``.
Images reach every module as float32 ``[batch, H*W*C]``, as they reach any jaxlin model: a module that
wants a grid reshapes them itself.

- Flax linen: the variables `init` returns (``{"params": ..., "batch_stats": ...}``). A class is
  instantiated with `num_classes` and `image_shape` when it has those fields. When `__call__` takes
  `train` (or `training`, `is_training`), evaluation calls it with ``train=False`` and training with
  ``train=True`` (`deterministic`: inverted, True in evaluation), the dropout key as the ``"dropout"`` RNG
  stream and every collection but "params" mutable.
- Flax nnx: the module's `nnx.Param` variables under "params", its other variables (`nnx.BatchStat`...)
  under "state". A class is called with ``rngs=nnx.Rngs(key)`` (and `num_classes`, `image_shape` when it
  takes them). Evaluation switches it with `module.eval()`, training with `module.train()` (flax's own
  switch of `Dropout.deterministic` and `BatchNorm.use_running_average`). Its RNG streams are not kept:
  each training step seeds them afresh from the step's dropout key, so resuming needs no stored key.
- Equinox: its floating-point arrays under "params", other arrays under "state" (static fields stay in
  the module). A class is called with ``key=key`` (and `num_classes`, `image_shape` when it takes them).
  The module is called per example, Equinox's convention, and `jax.vmap`ped over the batch; with
  ``key=`` (a key per example) in training when its `__call__` takes one. Evaluation uses
  `eqx.nn.inference_mode`. Modules with Equinox's stateful layers (`eqx.nn.BatchNorm`, `eqx.nn.State`)
  are refused: use Flax for batch norm.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
from typing import Any
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlin.errors import JaxlinError


class AdapterError(JaxlinError, ValueError):
    """A Flax or Equinox module jaxlin cannot train (one line, exit 2)."""


@dataclasses.dataclass(frozen=True)
class Adapted:
    """A module in jaxlin's model protocol (see `models.Model` for each field)."""

    init: Callable[[jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    train_apply: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]] | None = None
    trainable: Callable[[Any], Any] | None = None


def adapt(found, reference: str, image_shape: tuple[int, int, int], num_classes: int) -> Adapted | None:
    """`found` wrapped when it is a Flax linen, Flax nnx or Equinox module (class or instance), else None."""
    for library, wrap in (("flax.linen", _linen), ("flax.nnx", _nnx), ("equinox", _equinox)):
        module = sys.modules.get(library)
        if module is None:  # the user's code never imported it: found cannot be one of its modules
            continue
        base = module.Module
        if isinstance(found, base) or (isinstance(found, type) and issubclass(found, base)):
            return wrap(found, reference, image_shape, num_classes)
    return None


def _collections_trainable(params: dict) -> dict:
    """The trained leaves of adapted params: those under "params"."""
    return {name: jax.tree.map(lambda _, trained=name == "params": trained, tree) for name, tree in params.items()}


def _takes(function, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _sizes(function, image_shape, num_classes) -> dict:
    """The data's sizes for a constructor that takes them by name."""
    sizes = {"num_classes": num_classes, "image_shape": tuple(image_shape)}
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return {}
    return {name: value for name, value in sizes.items() if name in parameters}


def _call(reference: str, make: Callable, what: str):
    try:
        return make()
    except Exception as err:
        raise AdapterError(f"--model {reference}: {what} failed: {type(err).__name__}: "
                           f"{(str(err).strip().splitlines() or [''])[0][:200]}") from err


# ---- Flax linen ---------------------------------------------------------------------------------------

# The names under which a linen module's `__call__` takes its training switch, in the order looked for;
# those in _INVERTED_SWITCHES are True in evaluation (Flax's own `deterministic`).
_LINEN_SWITCHES = ("train", "training", "is_training", "deterministic")
_INVERTED_SWITCHES = ("deterministic",)


def _linen_switch(function) -> str | None:
    """The argument of a linen `__call__` that switches training on (or, inverted, off), if it names one."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return None
    named = next((name for name in _LINEN_SWITCHES if name in parameters), None)
    if named is None and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return "train"  # **kwargs: given train=, as it always was
    return named


def _check_draws_nothing(reference: str, trace: Callable) -> None:
    """A linen module with no training switch must run without a "dropout" stream: one that asks for it
    (dropout left on) is refused with the names jaxlin switches it by. Other failures are left to the
    model's own check (`models.user_model`), which reports them."""
    try:
        trace()
    except Exception as err:
        if type(err).__name__ != "InvalidRngError":
            return
        raise AdapterError(f"--model {reference}: it draws random numbers (dropout) when evaluated, and its "
                           f"__call__ takes no switch jaxlin knows: give it an argument train, training, "
                           f"is_training or deterministic (True in evaluation) that turns dropout off") from err


def _linen(found, reference, image_shape, num_classes) -> Adapted:
    from flax import linen as nn
    from flax.core import unfreeze

    if isinstance(found, type):
        fields = {f.name for f in dataclasses.fields(found)}
        sizes = {k: v for k, v in {"num_classes": num_classes, "image_shape": tuple(image_shape)}.items()
                 if k in fields}
        found = _call(reference, lambda: found(**sizes), f"{found.__name__}({', '.join(sizes)})")
    module: nn.Module = found
    switch_name = _linen_switch(module.__call__)
    has_train = switch_name is not None
    if switch_name in _INVERTED_SWITCHES:  # deterministic=True is evaluation
        def switch(train):
            return {switch_name: not train}
    elif has_train:
        def switch(train):
            return {switch_name: train}
    else:
        def switch(train):
            return {}
    example = jnp.zeros((1, math.prod(image_shape)), jnp.float32)

    def init(key):
        params_key, dropout_key = jax.random.split(key)
        return unfreeze(module.init({"params": params_key, "dropout": dropout_key}, example, **switch(False)))

    def apply(params, images):
        return module.apply(params, images, **switch(False))

    shapes = jax.eval_shape(init, jax.random.key(0))
    if not has_train:
        _check_draws_nothing(reference, lambda: jax.eval_shape(apply, shapes, example))
    mutable = [name for name in shapes if name != "params"]
    if not has_train and not mutable:
        return Adapted(init, apply)  # a plain function of its params: trained as any jaxlin model

    def train_apply(params, images, key):
        logits, updated = module.apply(params, images, **switch(True), rngs={"dropout": key}, mutable=mutable)
        return logits, {**params, **unfreeze(updated)}

    return Adapted(init, apply, train_apply, _collections_trainable)


# ---- Flax nnx -----------------------------------------------------------------------------------------

class _Nested:
    """A pytree as a nested dict of its array leaves keyed by their path names (strings), and back: the
    form in which checkpoints and params.npz store any params."""

    def __init__(self, tree, drop_last: str | None = None):
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(tree)
        self.paths = [tuple(_key_name(k) for k in path) for path, _ in flat]
        if drop_last is not None:  # nnx's variables end every path in "value": kernel, not kernel/value
            self.paths = [path[:-1] if len(path) > 1 and path[-1] == drop_last else path for path in self.paths]

    def to_dict(self, tree) -> dict:
        out: dict = {}
        for path, leaf in zip(self.paths, jax.tree.leaves(tree)):
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = leaf
        return out

    def from_dict(self, nested: dict):
        def get(path):
            node = nested
            for key in path:
                node = node[key]
            return node

        return self.treedef.unflatten([get(path) for path in self.paths])


def _key_name(entry) -> str:
    for attribute in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _nnx(found, reference, image_shape, num_classes) -> Adapted:
    from flax import nnx

    if isinstance(found, type):
        sizes = _sizes(found.__init__, image_shape, num_classes)
        cls = found

        def construct(key):
            return cls(**sizes, rngs=nnx.Rngs(key))

        template = _call(reference, lambda: nnx.eval_shape(lambda: construct(jax.random.key(0))),
                         f"{cls.__name__}({', '.join([*sizes, 'rngs'])})")
    else:
        instance = found

        def construct(key):
            del key  # an instance brings its own initial values
            return instance

        template = instance
    graphdef, params_state, rng_state, other_state = nnx.split(template, nnx.Param, nnx.RngState, ...)
    layout = {"params": _Nested(params_state, "value"), "state": _Nested(other_state, "value")}
    has_state = bool(layout["state"].paths)
    rng_leaves, rng_treedef = jax.tree.flatten(rng_state)

    def to_params(model) -> dict:
        _, params, _, other = nnx.split(model, nnx.Param, nnx.RngState, ...)
        out = {"params": layout["params"].to_dict(params)}
        return {**out, "state": layout["state"].to_dict(other)} if has_state else out

    def fresh_rngs(key):
        """The RNG streams, seeded from `key`: each key variable its own fold of it, each counter 0."""
        leaves = [jax.random.fold_in(key, i) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
                  else jnp.zeros(leaf.shape, leaf.dtype) for i, leaf in enumerate(rng_leaves)]
        return rng_treedef.unflatten(leaves)

    def merged(params, key):
        states = [layout["params"].from_dict(params["params"]), fresh_rngs(key)]
        if has_state:
            states.append(layout["state"].from_dict(params["state"]))
        return nnx.merge(graphdef, *states)

    def init(key):
        return to_params(construct(key))

    def apply(params, images):
        model = merged(params, jax.random.key(0))  # evaluation draws nothing: any key will do
        model.eval()
        return model(images)

    def train_apply(params, images, key):
        model = merged(params, key)
        model.train()
        return model(images), to_params(model)

    if not rng_leaves and not has_state:  # no dropout stream, no statistics: trained as any jaxlin model
        return Adapted(init, apply)
    return Adapted(init, apply, train_apply, _collections_trainable)


# ---- Equinox ------------------------------------------------------------------------------------------

def _equinox(found, reference, image_shape, num_classes) -> Adapted:
    import equinox as eqx

    if isinstance(found, type):
        sizes = _sizes(found.__init__, image_shape, num_classes)
        cls = found

        def construct(key):
            return cls(**sizes, key=key)

        template = _call(reference, lambda: eqx.filter_eval_shape(construct, jax.random.key(0)),
                         f"{cls.__name__}({', '.join([*sizes, 'key'])})")
    else:
        instance = found

        def construct(key):
            del key  # an instance brings its own initial values
            return instance

        template = instance
    stateful = (eqx.nn.BatchNorm, eqx.nn.StateIndex)
    if any(isinstance(node, stateful) for node in jax.tree.leaves(template, is_leaf=lambda n: isinstance(n, stateful))):
        raise AdapterError(f"--model {reference}: Equinox modules with state (eqx.nn.BatchNorm, eqx.nn.State) "
                           f"are not supported; use a Flax module for batch norm")
    # The template of a class is abstract (shapes only): its leaves are arrays to be, not static fields.
    def is_array(leaf):
        return eqx.is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct)

    def is_inexact(leaf):
        return is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact)

    arrays, static = eqx.partition(template, is_array)
    trained, other = eqx.partition(arrays, is_inexact)
    layout = {"params": _Nested(trained), "state": _Nested(other)}
    has_state = bool(layout["state"].paths)
    takes_key = _takes(type(template).__call__, "key")

    def init(key):
        arrays = eqx.filter(construct(key), is_array)
        trained, other = eqx.partition(arrays, is_inexact)
        out = {"params": layout["params"].to_dict(trained)}
        return {**out, "state": layout["state"].to_dict(other)} if has_state else out

    def module(params):
        parts = [layout["params"].from_dict(params["params"])]
        if has_state:
            parts.append(layout["state"].from_dict(params["state"]))
        return eqx.combine(*parts, static)

    def apply(params, images):
        model = eqx.nn.inference_mode(module(params), True)
        return jax.vmap(model)(images)

    def train_apply(params, images, key):
        model = eqx.nn.inference_mode(module(params), False)
        if takes_key:
            logits = jax.vmap(lambda image, k: model(image, key=k))(images, jax.random.split(key, images.shape[0]))
        else:
            logits = jax.vmap(model)(images)
        return logits, params

    if not takes_key and not has_state:  # a plain function of its params: trained as any jaxlin model
        return Adapted(init, apply)
    return Adapted(init, apply, train_apply, _collections_trainable)
