"""`jaxlin sweep`: many models trained together in one compiled program.

A model of 7,850 parameters cannot fill an accelerator, nor two CPU cores; what users of
small models run is many of them (a learning-rate search, seeds for error bars). The
members of a sweep (the cross product of the learning rates, momentums, seeds and data
seeds given) are `jax.vmap`ped over their params and optimizer states inside the same
fused `lax.scan` loop `jaxlin train` uses. Each member's hyperparameters live in its
optimizer state (`optax.inject_hyperparams`, see `optimizers`), so one compiled program
serves every learning rate.

When the members share the batch order (one data seed: the default) each step's batch is
gathered once and is not mapped, so the members' products become one wide matmul
`x @ [W_1 ... W_M]`: this is what makes a sweep fast. `--data-seeds` gives members their
own batch orders (each gathers its own batch; measurably slower).

jaxlin's own dense models (linear, MLP) with a shared order go further: the "wide layout"
(`wide_layout_applies`). Under `vmap` the members' params live as (M, 784, H), so although
the shared batch becomes one wide matmul, each step also transposed M weight matrices (the
bias add puts the member axis first; bench/NOTES.md items 14-16). The wide layout transposes
the state once per chunk to (784, M, H), where `x @ w.reshape(784, M*H)` is the wide matmul
with no copy, and back at the chunk's end: the SweepState, checkpoints and evaluation keep
the members first.

A member whose loss becomes non-finite is frozen from that step (its updates masked) and
reported with the step; the others are unaffected. Selection reads only the 5,000
validation images: the best member is the one with the highest final validation accuracy
(lowest index on ties) among those that did not diverge, and its test accuracy is the
sweep's result. With `--devices N` the members are sharded over N devices along a
"models" mesh axis (the data replicated); a sweep whose member count does not divide is
padded with copies of its first member, which are dropped from every output.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlin import optimizers
from jaxlin.config import Config, ConfigError, check_grid_size, check_no_repeats
from jaxlin.data.datasets import Datasets
from jaxlin.training.evaluate import Evaluator, make_predict_fn, to_float_images
from jaxlin.training import precision
from jaxlin.models import ACTIVATIONS, Model
from jaxlin.runtime import chunk_form, compile_cache, cpu_convolutions
from jaxlin.runtime.devices import Placement, to_host
from jaxlin.training.sampler import EpochSampler, check_window
from jaxlin.training.state import SweepState
from jaxlin.training.trainer import dropout_key, is_stateful, make_update_fn, run_keys, scan_steps, step_key

# Of the device's (or, on a CPU, the host's) memory, what a sweep may plan to hold.
MEMORY_FRACTION = 0.8


@dataclasses.dataclass(frozen=True)
class Grid:
    """The values a sweep crosses; None: the base config's one value (momentums: only for optimizers
    that take one; data seeds: one shared batch order, --data-seed's or else --seed's). The numbers of
    the optimizer vary per member; the schedule's kind and warm-up are shared (see `optimizers`)."""

    learning_rates: tuple[float, ...] | None = None
    momentums: tuple[float, ...] | None = None
    seeds: tuple[int, ...] | None = None
    data_seeds: tuple[int, ...] | None = None
    weight_decays: tuple[float, ...] | None = None
    clip_norms: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        return {k: (list(v) if v is not None else None) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> Grid:
        return cls(**{k: (tuple(v) if v is not None else None) for k, v in values.items()})

    def sizes(self) -> dict[str, int]:
        """How many values each axis crosses, by flag (1: the base config's value)."""
        return {f"--{field.name.replace('_', '-')}": len(getattr(self, field.name) or (None,))
                for field in dataclasses.fields(self)}

    def members(self, base: Config) -> list[Config]:
        """Each member as the `jaxlin train` config that trains it alone, in the grid's order."""
        check_grid_size(self.sizes())  # from the lengths alone: a huge grid is refused before it is built
        takes = optimizers.spec(base.optimizer).hyperparameters
        if self.momentums is not None and "momentum" not in takes:
            raise ConfigError(f"--momentums: the {base.optimizer} optimizer takes no momentum "
                              f"(use --optimizer momentum)")
        shared_data_seed = base.data_seed if base.data_seed is not None else base.seed
        axes = {"learning_rate": self.learning_rates or (base.learning_rate,),
                "momentum": self.momentums or (base.momentum,),
                "weight_decay": self.weight_decays or (base.weight_decay,),
                "clip_norm": self.clip_norms or (base.clip_norm,),
                "seed": self.seeds or (base.seed,),
                "data_seed": self.data_seeds or (shared_data_seed,)}
        for name, values in axes.items():
            check_no_repeats(f"--{name.replace('_', '-')}s", values)
        members = [base.replace(**dict(zip(axes, values))) for values in itertools.product(*axes.values())]
        for member in members:
            member.validate()
        return members


def hyperparameter_names(base: Config, members: list[Config]) -> tuple[str, ...]:
    """The optimizer's numbers each member holds in its state (see `optimizers.sweep_hyperparameters`)."""
    return optimizers.sweep_hyperparameters(base, members)


def describe_member(member: Config, names: tuple[str, ...]) -> dict:
    """What tells a member apart, as it appears in sweep.json and the table; `names`: `hyperparameter_names`."""
    described = {name: getattr(member, name) for name in names}
    described["seed"] = member.seed
    described["data_seed"] = member.data_seed
    return described


# The fewest members the wide layout is used for. Fewer are faster vmapped: a vmapped linear model's dots take
# XLA's batched layout, 1.7-2x faster for one member than the wide layout's plain dot, 1.3x for two, 1.2x for
# four; from eight members the wide layout wins (1.09x at 8, about 1.2x at 64; bench/NOTES.md item 16a).
WIDE_MIN_MEMBERS = 8


def wide_layout_applies(model: Model, config: Config, shared_order: bool, placement: Placement,
                        num_members: int) -> bool:
    """Whether a sweep of `model` trains in the wide layout (see the module's docstring; `wide_chunk`).

    Only where the layout's own forward pass is certainly the model's: jaxlin's linear model and MLP (a
    user's model may look dense but its apply is its own), no training mode, the default compute dtype
    and matmul precision (`precision` wraps `apply`, which this path does not call), one shared batch
    order (per-member orders gather a batch each: nothing to widen), one device (the mesh shards the
    members' axis, which this layout moves), and at least `WIDE_MIN_MEMBERS` members."""
    if not (model.name in ("linear", "mlp") and model.first_layer_dense and model.train_apply is None
            and (model.activation in ACTIVATIONS or len(model.activation_widths) == 1)):
        return False
    if not (shared_order and placement.mesh is None and placement.num_devices == 1 and precision.is_default(config)
            and num_members >= WIDE_MIN_MEMBERS):
        return False
    params = jax.eval_shape(model.init, jax.random.key(0))
    return _is_dense_stack(params, model.layer_sizes)


def _is_dense_stack(params, layer_sizes) -> bool:
    """params laid out as `models.dense_apply` reads them: [{"w": (in, out), "b": (out,)}, ...] along layer_sizes."""
    if not isinstance(params, list) or len(params) != len(layer_sizes) - 1:
        return False
    for layer, fan_in, fan_out in zip(params, layer_sizes[:-1], layer_sizes[1:]):
        if not (isinstance(layer, dict) and set(layer) == {"w", "b"}
                and layer["w"].shape == (fan_in, fan_out) and layer["b"].shape == (fan_out,)):
            return False
    return True


def _member_axis(leaf) -> int:
    """Where a stacked leaf keeps its member axis in the wide layout: 1 for weight matrices (and their
    optimizer moments), (in, M, out); 0 for everything else (biases (M, out), counts and
    hyperparameters (M,))."""
    return 1 if leaf.ndim == 3 else 0


def to_wide(tree):
    """A members-first state (params or optimizer state) in the wide layout."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1) if _member_axis(x) else x, tree)


from_wide = to_wide  # the same swap undoes itself


def _member_cross_entropy(logits, labels):
    """(sum over members of their mean losses, each member's mean loss) for logits (B, M, C) and labels (B,):
    `trainer.cross_entropy_loss` per member. (Picking the label's logit by a one-hot mask instead of optax's
    gather, whose gradient is a scatter of B*M values, measured no steadier gain: bench/NOTES.md item 16a.)"""
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.broadcast_to(labels[:, None], logits.shape[:2])).mean(axis=0)
    return losses.sum(), losses


def wide_chunk(model: Model, optimizer, unroll: int = 1) -> Callable:
    """`sweep_chunk`'s loop for jaxlin's dense models with a shared batch order, in the wide layout
    (same arguments and results; `wide_layout_applies` says when). The state is swapped into the wide
    layout once at the start and back once at the end; in between, no step moves a member axis:

    - forward: the first layer is one matmul `x @ w.reshape(in, M*H)`; its (B, M*H) output reshapes
      for free to (B, M, H), where the biases (M, H) broadcast; deeper layers are per-member products
      (B, M, in) x (in, M, out) (an MLP's smaller layers);
    - loss: the sum over members of each member's mean cross-entropy, so each member's gradient is its
      own loss's (members share no params; `_member_cross_entropy`);
    - update: the optimizer `vmap`ped with in_axes/out_axes at each leaf's member axis (`_member_axis`),
      each member with the hyperparameters in its own state; the freeze mask broadcast along that axis.
    """
    activation = ACTIVATIONS.get(model.activation, lambda h: h)  # the linear model has no hidden layer

    def member_losses(params, images, labels):
        batch = images.shape[0]
        first = params[0]
        fan_in, members, width = first["w"].shape
        hidden = (images @ first["w"].reshape(fan_in, members * width)).reshape(batch, members, width) + first["b"]
        for layer in params[1:]:
            hidden = jnp.einsum("bmi,imo->bmo", activation(hidden), layer["w"]) + layer["b"]
        return _member_cross_entropy(hidden, labels)

    def keep_where(keep, new, old):
        shape = [1] * new.ndim
        shape[_member_axis(new)] = keep.shape[0]
        return jnp.where(keep.reshape(shape), new, old)

    def step(params, opt_state, frozen_at, images, labels, step_number):
        (_, losses), grads = jax.value_and_grad(member_losses, has_aux=True)(params, images, labels)
        param_axes = jax.tree.map(_member_axis, params)
        state_axes = jax.tree.map(_member_axis, opt_state)
        updates, new_opt_state = jax.vmap(optimizer.update, in_axes=(param_axes, state_axes, param_axes),
                                          out_axes=(param_axes, state_axes))(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        alive, finite = frozen_at < 0, jnp.isfinite(losses)
        keep = alive & finite
        params = jax.tree.map(functools.partial(keep_where, keep), new_params, params)
        opt_state = jax.tree.map(functools.partial(keep_where, keep), new_opt_state, opt_state)
        return params, opt_state, jnp.where(alive & ~finite, step_number, frozen_at), losses

    def train_chunk(params, opt_state, frozen_at, images_uint8, labels, order, offset, start_step, *,
                    batch_size, num_steps):
        if order.ndim != 1:
            raise ValueError("the wide layout needs one shared batch order")
        if order.shape[-1] < num_steps * batch_size:
            raise ValueError(f"batch order of {order.shape[-1]} indices is too short for {num_steps} steps "
                             f"of {batch_size}")

        def body(carry, i):
            indices = jax.lax.dynamic_slice(order, (offset + i * batch_size,), (batch_size,))
            # In bounds: the sampler's indices, in a window the host checked (`check_window`).
            images = to_float_images(images_uint8.at[indices].get(mode="promise_in_bounds"))
            batch_labels = labels.at[indices].get(mode="promise_in_bounds")
            *carry, losses = step(*carry, images, batch_labels, start_step + i + 1)
            return tuple(carry), losses

        carry = (to_wide(params), to_wide(opt_state), frozen_at)
        (params, opt_state, frozen_at), losses = scan_steps(body, carry, num_steps, unroll)
        return from_wide(params), from_wide(opt_state), frozen_at, losses

    return train_chunk


def sweep_chunk(apply_fn: Callable, optimizer, unroll: int = 1, shared_order: bool = True,
                model: Model | None = None, wide: bool = False) -> Callable:
    """The fused loop over M members, not yet jitted:

    (params[M], opt_state[M], frozen_at[M], train_uint8, labels, order, offset, start_step,
     batch_size, num_steps) -> (params, opt_state, frozen_at, losses[num_steps, M]).

    `order` is shared (1-D) or per member ([M, L]); step i reads order[offset + i*B : ... + B]
    (see `EpochSampler.window`). frozen_at[m] is -1 while member m trains, else the (1-based) step
    whose loss was not finite: from that step on its params and optimizer state stay as they were.

    A stateful `model` (dropout, batch-norm statistics: see `trainer.make_update_fn`) takes each member's
    dropout key after start_step (keys[M]): member m's step trains with the key `jaxlin train` of its
    seed would use at that step, so a member still matches a run of its own.

    `wide`: the same loop in the wide layout (`wide_chunk`), for a `model` `wide_layout_applies` to.
    """
    if wide:
        if model is None or not shared_order or is_stateful(model) or not _is_dense_stack(
                jax.eval_shape(model.init, jax.random.key(0)), model.layer_sizes):
            raise ValueError("the wide layout is for jaxlin's dense models with a shared batch order")
        return wide_chunk(model, optimizer, unroll)
    update = make_update_fn(apply_fn, optimizer, model)
    stateful = is_stateful(model)

    def member_step(params, opt_state, frozen_at, images, labels, step_number, key=None):
        key_args = (step_key(key, step_number - 1),) if stateful else ()  # step_number is 1-based
        new_params, new_opt_state, loss = update(params, opt_state, images, labels, *key_args)
        alive, finite = frozen_at < 0, jnp.isfinite(loss)
        keep = alive & finite
        params = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_params, params)
        opt_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_opt_state, opt_state)
        return params, opt_state, jnp.where(alive & ~finite, step_number, frozen_at), loss

    def train_chunk(params, opt_state, frozen_at, images_uint8, labels, order, offset, start_step, *keys,
                    batch_size, num_steps):
        if order.shape[-1] < num_steps * batch_size:
            raise ValueError(f"batch order of {order.shape[-1]} indices is too short for {num_steps} steps "
                             f"of {batch_size}")

        def gather(indices):
            # In bounds: the sampler's indices, in a window the host checked (`check_window`).
            images = to_float_images(images_uint8.at[indices].get(mode="promise_in_bounds"))
            return images, labels.at[indices].get(mode="promise_in_bounds")

        def body(carry, i):
            step_number = start_step + i + 1
            start = offset + i * batch_size
            if shared_order:  # one gather; the batch is not mapped, so the members' dots become one
                images, batch_labels = gather(jax.lax.dynamic_slice(order, (start,), (batch_size,)))
                carry_and_loss = jax.vmap(member_step, in_axes=(0, 0, 0, None, None, None) + (0,) * len(keys))(
                    *carry, images, batch_labels, step_number, *keys)
            else:
                def own_batch(params, opt_state, frozen, member_order, *key):
                    images, batch_labels = gather(jax.lax.dynamic_slice(member_order, (start,), (batch_size,)))
                    return member_step(params, opt_state, frozen, images, batch_labels, step_number, *key)

                carry_and_loss = jax.vmap(own_batch)(*carry, order, *keys)
            return carry_and_loss[:3], carry_and_loss[3]

        (params, opt_state, frozen_at), losses = scan_steps(body, (params, opt_state, frozen_at), num_steps, unroll)
        return params, opt_state, frozen_at, losses

    return train_chunk


def _member_keys(keys: list[jax.Array]) -> jax.Array:
    return jax.random.wrap_key_data(jnp.stack([jax.random.key_data(k) for k in keys]))


class SweepTrainer:
    """The compiled sweep and its device-resident data, driven by `loop.Loop` like a single model:
    its state is a `SweepState`, its evaluation every member's validation accuracy, and a member
    whose loss is not finite is frozen and reported, not raised."""

    def __init__(self, base: Config, members: list[Config], data: Datasets, model: Model, placement: Placement):
        compile_cache.enable_by_default()  # before anything compiles: library use caches as a command does
        self.base, self.model, self.placement = base, model, placement
        # What the chunk computes (--compute-dtype, --matmul-precision); evaluation keeps self.model's.
        model = precision.for_training(model, base)
        # A sweep always runs the fused loop; both forms by `jaxlin train`'s rules (recorded).
        form = chunk_form.choose(base.replace(loop="fused"), model, placement)
        self.config = base.replace(chunk_form=form, cpu_convolutions=cpu_convolutions.choose(base, model, placement))
        self._compiler_options = cpu_convolutions.compiler_options(self.config.cpu_convolutions,
                                                                   placement.devices[0].platform)
        self.num_validation = len(data.validation)
        self._reported: set[int] = set()
        self.num_members = len(members)
        padding = -len(members) % placement.num_devices
        self.members = members + [members[0]] * padding  # copies, dropped from every output
        self.hyperparameters = hyperparameter_names(base, members)
        self.optimizer = optimizers.build_injectable(
            base, **optimizers.member_hyperparameters(members[0], self.hyperparameters))
        data_seeds = sorted({m.data_seed for m in members})
        self.shared_order = len(data_seeds) == 1
        self.member_sharding = placement.batch_sharding(axis=0)
        self.train_images_uint8 = placement.put(data.train.images_uint8)
        self.train_labels = placement.put(data.train.labels)
        samplers = {seed: EpochSampler(run_keys(seed, seed)[1], len(data.train), base.batch_size)
                    for seed in data_seeds}
        self._samplers = [samplers[m.data_seed] for m in self.members]
        self._unique_samplers = samplers
        # "wide" or "vmapped": how the chunk lays out the members (see `wide_layout_applies`).
        self.layout = ("wide" if wide_layout_applies(self.model, base, self.shared_order, placement, len(self.members))
                       else "vmapped")
        chunk = sweep_chunk(model.apply, self.optimizer, base.unroll, self.shared_order, model,
                            wide=self.layout == "wide")
        # A stateful model's members each draw dropout keys from their own seed (see `sweep_chunk`).
        self._keys = (placement.put(_member_keys([dropout_key(m.seed) for m in self.members]), self.member_sharding),
                      ) if is_stateful(model) else ()
        extra = {}
        if placement.mesh is not None:
            losses = placement.batch_sharding(axis=1)
            extra = {"out_shardings": (self.member_sharding, self.member_sharding, self.member_sharding, losses)}
        self._chunk = jax.jit(chunk, static_argnames=("batch_size", "num_steps"), donate_argnums=(0, 1, 2), **extra)
        self._compiled: dict[int, Callable] = {}
        self.compile_seconds = 0.0
        self.validation = self._counter(data.validation)
        self.test = self._counter(data.test)

    def _counter(self, split) -> Callable[[object], np.ndarray] | None:
        """params[M] -> correct predictions of each member on `split` (host int array); its `dispatch`
        attribute starts the count and returns it on the device (see `_read_count`)."""
        if len(split) == 0:
            return None
        evaluator = Evaluator(self.model.apply, split.images_uint8, split.labels, self.model.eval_batch_size,
                              self.placement)
        batches = evaluator.batches
        labels = np.zeros(batches.shape[0] * batches.shape[1], np.int32)
        labels[:len(split)] = split.labels
        labels[len(split):] = -1  # padding never matches
        labels = self.placement.put(labels.reshape(batches.shape[:2]).ravel())
        predict = make_predict_fn(self.model.apply)

        # The split is an argument, not a constant of the program: across processes an array that spans
        # other hosts' devices cannot be closed over.
        def correct(member_params, batches, labels):
            return jnp.sum(predict(member_params, batches) == labels)

        if self.placement.mesh is None:
            # One member group at a time bounds the activations (10,000 images × the widest layer each).
            widest = max(self.model.activation_widths[:-1], default=16)
            group = max(1, min(len(self.members), 2**27 // (labels.shape[0] * widest)))
            count = jax.jit(lambda params, batches, labels: jax.lax.map(
                lambda member: correct(member, batches, labels), params, batch_size=group))
        else:
            count = jax.jit(jax.vmap(correct, in_axes=(0, None, None)))
        def counter(params) -> np.ndarray:
            return self._read_count(counter.dispatch(params))

        counter.dispatch = lambda params: count(params, batches, labels)
        return counter

    def _read_count(self, dispatched) -> np.ndarray:
        return np.asarray(to_host(dispatched))[:self.num_members]

    def init_state(self) -> SweepState:
        keys = _member_keys([run_keys(m.seed, m.data_seed)[0] for m in self.members])
        params = jax.vmap(self.model.init)(keys)
        each = [optimizers.member_hyperparameters(m, self.hyperparameters) for m in self.members]
        values = {name: jnp.asarray([v[name] for v in each], jnp.float32) for name in self.hyperparameters}
        make = functools.partial(optimizers.build_injectable, self.base)
        opt_state = jax.vmap(lambda p, hp: make(**hp).init(self.model.trained_part(p)))(params, values)
        frozen_at = jnp.full((len(self.members),), -1, jnp.int32)
        return self.place(SweepState(params, opt_state, frozen_at, 0))

    def place(self, state: SweepState) -> SweepState:
        """`state` on this trainer's devices. A saved state (its real members only, see `saved_state`) gets
        this placement's padding: copies of member 0, which a padded sweep trains identically to it."""
        padding = len(self.members) - self.num_members

        def pad(x):
            if padding and x.shape[0] == self.num_members:
                x = np.asarray(x)
                return np.concatenate([x, np.repeat(x[:1], padding, axis=0)])
            return x

        parts = jax.tree.map(pad, (state.params, state.opt_state, state.frozen_at))
        params, opt_state, frozen_at = self.placement.put(parts, self.member_sharding)
        return SweepState(params, opt_state, frozen_at, state.step)

    def saved_state(self, state: SweepState) -> SweepState:
        """The real members of `state` as host arrays: what a checkpoint holds, whatever the device count
        (so a sweep resumes on other --devices, padded afresh)."""
        parts = jax.tree.map(lambda x: np.asarray(x)[:self.num_members],
                             to_host((state.params, state.opt_state, state.frozen_at)))
        return SweepState(*parts, state.step)

    def state_template(self) -> SweepState:
        """The structure and dtypes of the sweep's saved state as host arrays (what a checkpoint restores into)."""
        return self.saved_state(self.init_state())

    def evaluate(self, state: SweepState) -> dict:
        return self.finish_evaluation(self.start_evaluation(state))

    def start_evaluation(self, state: SweepState):
        return self.validation.dispatch(state.params)

    def finish_evaluation(self, started) -> dict:
        return {"validation_accuracy": (self._read_count(started) / self.num_validation).tolist()}

    def keep(self, state: SweepState) -> SweepState:
        """`frozen_at` (what `take_losses` reads), copied: the next chunk donates the state's own."""
        return SweepState(None, None, state.frozen_at.copy(), state.step)

    def take_losses(self, losses: np.ndarray, start_step: int, state: SweepState, report) -> tuple:
        """Each member's losses of the steps it trained (not those from its freezing on); a member
        frozen in this chunk is reported once."""
        losses = losses[:, :self.num_members]
        frozen_at = self.frozen_at(state)
        step_numbers = start_step + 1 + np.arange(losses.shape[0])[:, None]
        trained = (frozen_at[None, :] < 0) | (step_numbers < frozen_at[None, :])
        for member in np.flatnonzero(frozen_at >= 0):
            if member not in self._reported:
                self._reported.add(int(member))
                report(f"Member {member} (learning rate {self.members[member].learning_rate}) diverged at step "
                       f"{frozen_at[member]}: frozen; the others go on")
        return np.where(trained, losses, 0.0).sum(axis=0, dtype=np.float64), trained.sum(axis=0)

    def postfix(self, losses: np.ndarray, evaluation: dict | None) -> dict:
        if evaluation is None:
            return {}
        return {"best_val_acc": f"{np.max(evaluation['validation_accuracy']):.2%}"}

    def _orders(self, start_step: int, num_steps: int) -> tuple[jax.Array, int]:
        windows = {seed: s.window(start_step, num_steps) for seed, s in self._unique_samplers.items()}
        offset = next(iter(windows.values()))[1]
        if self.shared_order:
            return self.placement.put(next(iter(windows.values()))[0]), offset
        seeds = [m.data_seed for m in self.members]
        return self.placement.put(jnp.stack([windows[s][0] for s in seeds]), self.member_sharding), offset

    def run_chunk(self, state: SweepState, num_steps: int) -> tuple[SweepState, jax.Array]:
        order, offset = self._orders(state.step, num_steps)
        check_window(order.shape[-1], offset, self.base.batch_size, num_steps)
        if num_steps not in self._compiled:
            tick = time.perf_counter()
            host_loop = self.config.chunk_form == "host-loop"
            length = 1 if host_loop else num_steps
            if length not in self._compiled:
                self._compiled[length] = self._chunk.lower(
                    state.params, state.opt_state, state.frozen_at, self.train_images_uint8, self.train_labels,
                    order, offset, state.step, *self._keys, batch_size=self.base.batch_size,
                    num_steps=length).compile(self._compiler_options)
            if num_steps != length:  # one compiled step, called per step (see runtime.chunk_form)
                self._compiled[num_steps] = chunk_form.HostLoopChunk(
                    self._compiled[1], num_carry=3, offset_at=6, start_at=7, batch_size=self.base.batch_size,
                    num_steps=num_steps)
            self.compile_seconds += time.perf_counter() - tick
        params, opt_state, frozen_at, losses = self._compiled[num_steps](
            state.params, state.opt_state, state.frozen_at, self.train_images_uint8, self.train_labels, order, offset,
            state.step, *self._keys)
        return SweepState(params, opt_state, frozen_at, state.step + num_steps), losses

    def frozen_at(self, state: SweepState) -> np.ndarray:
        return np.asarray(to_host(state.frozen_at))[:self.num_members]

    def member_params(self, state: SweepState, index: int):
        """One member's params (host arrays), as `jaxlin train` would save them."""
        return jax.tree.map(lambda x: np.asarray(x)[index], to_host(state.params))


def estimate_memory(base: Config, model: Model, num_members: int, num_devices: int, data: Datasets) -> int:
    """About how many bytes each device holds for the sweep: the members' state (params, optimizer
    state, gradients and updates), their activations for one training step and for an evaluation
    (10,000 images at once, in member groups on one device, all members on a mesh), and the data."""
    params = jax.eval_shape(model.init, jax.random.key(0))
    param_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params))
    opt_state = jax.eval_shape(optimizers.build(base).init, model.trained_part(params))
    opt_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(opt_state))
    widths = model.activation_widths
    activation_bytes = 4 * 3 * base.batch_size * sum(widths)
    members_per_device = -(-num_members // num_devices)
    eval_examples = max(len(data.validation), len(data.test), 1)
    widest = max(widths)
    eval_group = members_per_device if num_devices > 1 else max(1, min(num_members, 2**27 // (eval_examples * widest)))
    eval_bytes = 4 * 2 * eval_group * eval_examples * sum(widths)
    data_bytes = sum(split.images_uint8.nbytes + 4 * len(split) for split in (data.train, data.validation, data.test))
    return members_per_device * (3 * param_bytes + opt_bytes + activation_bytes) + eval_bytes + data_bytes


# What a process holds on the host beside the devices' arrays: the runtime and its libraries, and
# the data as loaded (measured: about 0.6 GB resident for a one-member sweep).
HOST_OVERHEAD_BYTES = 2**29


def memory_limit(placement: Placement) -> tuple[int, str]:
    """(bytes, what) a device offers: its allocator's limit, or on a CPU the host's physical memory."""
    stats = None
    try:
        stats = placement.devices[0].memory_stats()
    except Exception:
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{placement.devices[0].device_kind} memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def best_member(validation_accuracy: list[float | None], diverged_at: list[int | None]) -> int | None:
    """The member with the highest final validation accuracy (the first on ties) among those that did
    not diverge; None when none qualifies. Reads nothing else: never the test set."""
    candidates = [i for i, (accuracy, diverged) in enumerate(zip(validation_accuracy, diverged_at))
                  if diverged is None and accuracy is not None]
    return max(candidates, key=lambda i: (validation_accuracy[i], -i)) if candidates else None
