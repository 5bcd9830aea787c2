"""Training: loss, optimizer, the per-step update and the fused device-resident loop.

The fused loop keeps the uint8 training set on the device and runs a chunk of
steps inside one compiled `lax.scan`; the host only walks over chunks (see
`schedule`), which end at evaluations and checkpoints, and checks between them
whether it was asked to stop. Batches come from `sampler.EpochSampler`: shuffled
epochs without replacement, drawn on the device from a PRNG key, like the
tutorial's `next_batch`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlin.errors import JaxlinError
from jaxlin.runtime import chunk_form, compile_cache, cpu_convolutions, dot_layout as layout

from jaxlin import optimizers
from jaxlin.config import Config, checkpoint_interval
from jaxlin.data.datasets import Datasets
from jaxlin.training.evaluate import Evaluator, to_float_images
from jaxlin.training import precision
from jaxlin.models import Model, as_model, check_fits_data, keeping_fixed_leaves
from jaxlin.runtime.devices import Placement, resolve_placement, to_host
from jaxlin.training.sampler import EpochSampler, check_window
from jaxlin.training.loop import Loop, LoopHooks, Progress
from jaxlin.training.schedule import checkpoint_schedule, eval_schedule
from jaxlin.training.state import TrainState


class DivergenceError(JaxlinError, RuntimeError):
    """Training produced a non-finite loss (exit 3: the settings ran, the model did not train)."""

    exit_code = 3

    def __init__(self, step: int, loss: float):
        super().__init__(
            f"training diverged at step {step}: loss is {loss} "
            f"(try a smaller learning rate)"
        )
        self.step = step
        self.loss = loss


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """The optimizer `config` describes: its schedule, weight decay and clipping (see `optimizers.build`)."""
    return optimizers.build(config)


def run_keys(seed: int, data_seed: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(init key, batch-order key) of a run: both from `seed`, or the order from `data_seed`'s,
    so that members of a sweep that share a batch order each match a `jaxlin train` run."""
    init_key, sample_key = jax.random.split(jax.random.key(seed))
    if data_seed is not None:
        sample_key = jax.random.split(jax.random.key(data_seed))[1]
    return init_key, sample_key


# Folded into the run's seed to make its dropout keys: a stream of its own, so the init and batch-order
# keys (`run_keys`) and every existing run's bits stay as they were.
DROPOUT_STREAM = 0x64726F70


def dropout_key(seed: int) -> jax.Array:
    """The base of a run's dropout keys, from its seed alone (a sweep member's from its own seed)."""
    return jax.random.fold_in(jax.random.key(seed), DROPOUT_STREAM)


def step_key(base: jax.Array, step) -> jax.Array:
    """The dropout key of global step `step` (0-based): a function of the seed and the step only, so a
    resumed run draws the same masks as one that never stopped, and no key is stored."""
    return jax.random.fold_in(base, step)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy averaged over the batch (labels are class ids)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_update_fn(apply_fn: Callable, optimizer: optax.GradientTransformation,
                   model: Model | None = None) -> Callable:
    """One gradient step: (params, opt_state, images, labels) -> (params, opt_state, loss).

    For a `model` with a training mode (`Model.train_apply`: dropout, batch-norm statistics) the step
    takes the step's dropout key too, (params, opt_state, images, labels, key): the loss comes from
    `train_apply`, gradients and the optimizer see only the trained leaves (`Model.trained_part`), and
    the other leaves take the values `train_apply` returned, so no optimizer or weight decay touches
    them. Any other model gets exactly the step it always had (the same compiled code, the same bits).
    """
    if model is not None and model.train_apply is not None:
        return _make_stateful_update(model, optimizer)

    def update(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy_loss(apply_fn(p, images), labels))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return update


def _make_stateful_update(model: Model, optimizer: optax.GradientTransformation) -> Callable:
    def update(params, opt_state, images, labels, key):
        def loss_fn(trained):
            logits, new_params = model.train_apply(model.with_trained(params, trained), images, key)
            return cross_entropy_loss(logits, labels), new_params

        trained = model.trained_part(params)
        (loss, new_params), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        return model.with_trained(new_params, optax.apply_updates(trained, updates)), opt_state, loss

    return update


def is_stateful(model: Model | None) -> bool:
    """Whether `model` trains through its own training mode, which takes a dropout key per step."""
    return model is not None and model.train_apply is not None


def make_train_step(apply_fn: Callable, optimizer: optax.GradientTransformation,
                    model: Model | None = None) -> Callable:
    """The per-step path: a jitted update fed with host batches of float images. A stateful `model`'s
    step also takes the (0-based) global step and the run's dropout key: (..., labels, step, base_key)."""
    update = make_update_fn(apply_fn, optimizer, model)
    if not is_stateful(model):
        return jax.jit(update, donate_argnums=(0, 1))

    def step(params, opt_state, images, labels, step_number, base_key):
        return update(params, opt_state, images, labels, step_key(base_key, step_number))

    return jax.jit(step, donate_argnums=(0, 1))


def scan_steps(body: Callable, carry, num_steps: int, unroll: int = 1):
    """`lax.scan(body, carry, arange(num_steps))`, except that one step is the body alone: JAX emits even a
    scan of length 1 as a loop, and XLA's CPU backend runs convolutions inside a loop several times slower
    (see `runtime.chunk_form`, whose host loop calls the one-step chunk)."""
    if num_steps == 1:
        carry, loss = body(carry, jnp.int32(0))
        return carry, jnp.expand_dims(loss, 0)
    return jax.lax.scan(body, carry, jnp.arange(num_steps, dtype=jnp.int32), unroll=unroll)


def fused_train_chunk(apply_fn: Callable, optimizer: optax.GradientTransformation, unroll: int = 1,
                      shard_batch: Callable = lambda indices: indices, model: Model | None = None) -> Callable:
    """The fused path's body, not yet jitted (so it can be vmapped over many models):

    (params, opt_state, train_uint8, train_labels, order, offset, batch_size, num_steps)
    -> (params, opt_state, losses[num_steps]), where step i trains on the examples
    order[offset + i*B : offset + (i+1)*B] (see `EpochSampler.window`). `shard_batch` lays out
    each step's indices (sharded over a mesh by `Placement.constrain_batch`), so that each
    device gathers and trains on its part of the batch.

    A stateful `model` (see `make_update_fn`) takes two more arguments after `offset`: the chunk's first
    global step (traced, so one compiled chunk serves every chunk of its length) and the run's dropout
    key; step i trains with `step_key(base_key, start_step + i)`.
    """
    update = make_update_fn(apply_fn, optimizer, model)

    def gather(images_uint8, labels, order, offset, batch_size, step):
        indices = shard_batch(jax.lax.dynamic_slice(order, (offset + step * batch_size,), (batch_size,)))
        # The window lies inside the order (checked when traced and by the host, `check_window`) and
        # the sampler's indices are in bounds: promising it spares the gather its clamping.
        images = to_float_images(images_uint8.at[indices].get(mode="promise_in_bounds"))
        return images, labels.at[indices].get(mode="promise_in_bounds")

    def check_order(order, batch_size, num_steps):
        if order.shape[0] < num_steps * batch_size:  # shapes are static: checked when traced
            raise ValueError(f"batch order of {order.shape[0]} indices is too short for {num_steps} steps "
                             f"of {batch_size}")

    def train_chunk(params, opt_state, images_uint8, labels, order, offset, batch_size, num_steps):
        check_order(order, batch_size, num_steps)

        def body(carry, step):
            params, opt_state, loss = update(*carry, *gather(images_uint8, labels, order, offset, batch_size, step))
            return (params, opt_state), loss

        (params, opt_state), losses = scan_steps(body, (params, opt_state), num_steps, unroll)
        return params, opt_state, losses

    def stateful_chunk(params, opt_state, images_uint8, labels, order, offset, start_step, base_key, batch_size,
                       num_steps):
        check_order(order, batch_size, num_steps)

        def body(carry, step):
            batch = gather(images_uint8, labels, order, offset, batch_size, step)
            params, opt_state, loss = update(*carry, *batch, step_key(base_key, start_step + step))
            return (params, opt_state), loss

        (params, opt_state), losses = scan_steps(body, (params, opt_state), num_steps, unroll)
        return params, opt_state, losses

    return stateful_chunk if is_stateful(model) else train_chunk


def as_singleton_batch(chunk: Callable) -> Callable:
    """The same chunk computed as a `vmap` over one model: XLA lays out its dots differently (the
    "batched" layout, see `layout`); params and optimizer state keep their shapes outside."""

    def batched(params, opt_state, *rest, **static):
        add = functools.partial(jax.tree.map, lambda x: x[None])
        out = jax.vmap(functools.partial(chunk, **static), in_axes=(0, 0) + (None,) * len(rest))(
            add(params), add(opt_state), *rest)
        return jax.tree.map(lambda x: x[0], out)

    return batched


def make_fused_train(apply_fn: Callable, optimizer: optax.GradientTransformation, unroll: int = 1,
                     placement: Placement | None = None, dot_layout: str = "plain",
                     model: Model | None = None) -> Callable:
    """`fused_train_chunk` jitted, with batch_size and num_steps static and the state donated;
    over several devices, each step's batch is sharded and the results replicated. `dot_layout`
    "batched" computes it as a singleton vmap (one device only). A stateful `model`: see
    `fused_train_chunk`."""
    if placement is None or placement.mesh is None:
        chunk = fused_train_chunk(apply_fn, optimizer, unroll, model=model)
        if dot_layout == "batched":
            chunk = as_singleton_batch(chunk)
        return jax.jit(chunk, static_argnames=("batch_size", "num_steps"), donate_argnums=(0, 1))
    replicated = placement.replicated
    return jax.jit(fused_train_chunk(apply_fn, optimizer, unroll, placement.constrain_batch, model),
                   static_argnames=("batch_size", "num_steps"), donate_argnums=(0, 1),
                   out_shardings=(replicated, replicated, replicated))


@dataclasses.dataclass
class FitResult:
    params: list  # host arrays
    state: TrainState
    evaluations: list[dict]  # this session's records, see `LoopHooks.on_evaluation`
    timings: dict
    device: str
    stopped: bool = False  # True when `hooks.should_stop()` ended the run before its last step
    final: dict | None = None  # `Evaluator` metrics of the final params (None when stopped)
    config: Config | None = None  # the config trained, with its dot layout resolved
    optimizer: str = ""  # what trained: `optimizers.describe(config)`, or "a custom optax transformation"


class Trainer:
    """Compiled training and evaluation functions bound to device-resident data.

    Chunk functions are compiled the first time a chunk length is needed, so set-up does not
    depend on the number of steps; `compile_seconds` sums the time spent compiling.
    """

    def __init__(self, config: Config, data: Datasets, model: Model, placement: Placement,
                 optimizer: optax.GradientTransformation | None = None):
        compile_cache.enable_by_default()  # before anything compiles: library use caches as a command does
        self.config, self.model, self.placement = config, model, placement
        # What the training steps compute (--compute-dtype, --matmul-precision); evaluation keeps self.model's.
        model = precision.for_training(model, config)
        self.optimizer = optimizer if optimizer is not None else make_optimizer(config)
        init_key, self.sample_key = run_keys(config.seed, config.data_seed)
        # The whole uint8 data set on every device: each gathers its part of each batch locally.
        self.train_images_uint8 = placement.put(data.train.images_uint8)
        self.train_labels = placement.put(data.train.labels)
        # The per-step path feeds float batches from the host, as the tutorial did.
        self.host_train_images = data.train.images if config.loop == "per-step" else None
        self.host_train_labels = data.train.labels
        self.evaluator = Evaluator(self.model.apply, data.test.images_uint8, data.test.labels,
                                   batch_size=model.eval_batch_size, placement=placement)
        self.sampler = EpochSampler(self.sample_key, len(data.train), config.batch_size, place=placement.put)
        self._init_key = init_key
        self.compile_seconds = 0.0
        chosen = layout.choose(config, model, placement)  # fixed rules: same flags, same bits
        form = chunk_form.choose(config, model, placement)
        self.config = config = config.replace(cpu_convolutions=cpu_convolutions.choose(config, model, placement))
        if config.loop == "fused":
            self.config = config = config.replace(dot_layout=chosen, chunk_form=form)
        self._compiler_options = cpu_convolutions.compiler_options(config.cpu_convolutions,
                                                                   placement.devices[0].platform)
        self._fused = make_fused_train(model.apply, self.optimizer, config.unroll, placement, chosen, model)
        self._step = make_train_step(model.apply, self.optimizer, model)
        # A stateful model's steps take the run's dropout key and their global step (see `fused_train_chunk`).
        self._dropout_key = placement.put(dropout_key(config.seed)) if is_stateful(model) else None
        self._compiled: dict[int, Callable] = {}

    def _key_args(self, start_step: int) -> tuple:
        """The arguments a stateful model's chunk or step takes after the batch: none for the others."""
        if self._dropout_key is None:
            return ()
        return np.int32(start_step), self._dropout_key

    def init_state(self) -> TrainState:
        params = self.placement.put(self.model.init(self._init_key))
        return TrainState(params, self.optimizer.init(self.model.trained_part(params)), 0)

    def place(self, state: TrainState) -> TrainState:
        """A (restored, host) state on this trainer's devices."""
        params, opt_state = self.placement.put((state.params, state.opt_state))
        return TrainState(params, opt_state, state.step)

    def _compiled_chunk(self, state: TrainState, length: int) -> Callable:
        if length not in self._compiled:
            start = time.perf_counter()
            batch_size = self.config.batch_size
            if self.config.loop == "fused" and self.config.chunk_form == "host-loop":
                if 1 not in self._compiled:
                    self._compiled[1] = self._compile_fused(state, 1)
                step = self._compiled[1]
                self._compiled[length] = step if length == 1 else chunk_form.HostLoopChunk(
                    step, num_carry=2, offset_at=5, start_at=6 if self._dropout_key is not None else None,
                    batch_size=batch_size, num_steps=length)
            elif self.config.loop == "fused":
                self._compiled[length] = self._compile_fused(state, length)
            else:
                images, labels = self.placement.put(
                    (self.host_train_images[:batch_size], self.host_train_labels[:batch_size]),
                    self.placement.batch_sharding())
                self._compiled[length] = self._step.lower(state.params, state.opt_state, images, labels,
                                                          *self._key_args(0)).compile(self._compiler_options)
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[length]

    def _compile_fused(self, state: TrainState, length: int) -> Callable:
        order = self.sampler.warm_up(length)
        return self._fused.lower(state.params, state.opt_state, self.train_images_uint8, self.train_labels, order, 0,
                                 *self._key_args(0), batch_size=self.config.batch_size,
                                 num_steps=length).compile(self._compiler_options)

    def state_template(self) -> TrainState:
        """The structure and dtypes of this trainer's state as host zeros (what a checkpoint restores into)."""
        params = jax.eval_shape(self.model.init, self._init_key)
        params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
        return TrainState(params, self.optimizer.init(self.model.trained_part(params)), 0)

    def saved_state(self, state: TrainState) -> TrainState:
        """What a checkpoint holds: the state itself (the store copies it to the host)."""
        return state

    def evaluate(self, state: TrainState) -> dict:
        return self.finish_evaluation(self.start_evaluation(state))

    def start_evaluation(self, state: TrainState):
        return self.evaluator.dispatch(state.params)

    def finish_evaluation(self, started) -> dict:
        return {"test_accuracy": self.evaluator.accuracy_of(started)}

    def keep(self, state: TrainState) -> None:
        return None  # `take_losses` reads nothing of the state

    def take_losses(self, losses: np.ndarray, start_step: int, state: TrainState, report) -> tuple:
        check_finite(losses, start_step)
        return np.sum(losses, dtype=np.float64), losses.shape[0]

    def postfix(self, losses: np.ndarray, evaluation: dict | None) -> dict:
        shown = {"loss": f"{float(losses[-1]):.4f}"}
        if evaluation is not None:
            shown["test_acc"] = f"{evaluation['test_accuracy']:.2%}"
        return shown

    def run_chunk(self, state: TrainState, num_steps: int) -> tuple[TrainState, jax.Array]:
        """`num_steps` updates from `state.step`; returns the new state and per-step losses."""
        start_step, batch_size = state.step, self.config.batch_size
        if self.config.loop == "fused":
            chunk = self._compiled_chunk(state, num_steps)
            order, offset = self.sampler.window(start_step, num_steps)
            check_window(order.shape[0], offset, batch_size, num_steps)
            params, opt_state, losses = chunk(
                state.params, state.opt_state, self.train_images_uint8, self.train_labels, order, offset,
                *self._key_args(start_step))
            return TrainState(params, opt_state, start_step + num_steps), losses
        step_fn, losses = self._compiled_chunk(state, 1), []
        params, opt_state = state.params, state.opt_state
        sharded = self.placement.batch_sharding()
        for step, indices in enumerate(self.sampler.batch_indices(start_step, num_steps), start_step):
            images, labels = self.placement.put((self.host_train_images[indices], self.host_train_labels[indices]),
                                                sharded)
            params, opt_state, loss = step_fn(params, opt_state, images, labels, *self._key_args(step))
            losses.append(loss)
        return TrainState(params, opt_state, start_step + num_steps), jnp.stack(losses)


def check_finite(losses: np.ndarray, start_step: int) -> None:
    """Raises DivergenceError naming the first step (1-based) whose loss is not finite."""
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise DivergenceError(start_step + int(bad[0]) + 1, float(losses[bad[0]]))


def fit(config: Config, data: Datasets, model: Model, eval_steps: Iterable[int] | None = None,
        progress: bool = True, *, start: tuple[TrainState, Progress] | None = None,
        hooks: LoopHooks | None = None, optimizer: optax.GradientTransformation | None = None) -> FitResult:
    """Trains `model` up to `config.num_steps`, evaluating test accuracy at `eval_steps`
    (default: every `config.eval_every` steps and after the last). `model` is a `Model` (`get_model`), or
    anything `--model` takes (an object with init and apply, a Flax or Equinox module), built for the data.

    `start` resumes from a restored (host) state and its progress; `hooks` receive each
    evaluation record and checkpoint, and can stop the run between chunks. `optimizer`, any optax
    GradientTransformation (a schedule, clipping, weight decay...), replaces the one `config` names
    (whose optimizer settings are then unused: `FitResult.optimizer` says what ran).
    """
    config.validate(len(data.train), data.num_features, data.num_classes)
    if optimizer is not None:
        optimizers.check_custom(optimizer, config)
    if not isinstance(model, Model):  # a Flax or Equinox module, or an object with init and apply, as it is
        model = as_model(model, getattr(model, "__name__", type(model).__name__), data.image_shape, data.num_classes)
    check_fits_data(model, data.num_features, data.num_classes)  # one ModelError, before anything runs
    model = keeping_fixed_leaves(model)  # integer leaves (a permutation, a counter): kept out of the gradients
    optimizers.check_traces(optimizer if optimizer is not None else make_optimizer(config), model,
                            "fit's optimizer=" if optimizer is not None else f"optimizer {config.optimizer}")
    hooks = hooks or LoopHooks()
    config = config.with_eval_interval()
    placement = resolve_placement(config.device, config.devices, config.batch_size)
    evals = eval_schedule(config.num_steps, config.eval_every, eval_steps)
    checkpoint_every = config.checkpoint_every if hooks.checkpoints else 0
    saves = checkpoint_schedule(config.num_steps, checkpoint_every, evals)
    with jax.default_device(placement.local_device):
        trainer = Trainer(config, data, model, placement, optimizer)
        state, progress_so_far = (trainer.place(start[0]), start[1]) if start else (trainer.init_state(), Progress())
        loop = Loop(trainer, evals, saves, hooks, progress_so_far, fresh=start is None,
                    save_seconds=checkpoint_interval(checkpoint_every).seconds)
        state = loop.run(state, progress)
        stopped = state.step < config.num_steps
        final = None if stopped else trainer.evaluator(state.params)
    return FitResult(to_host(state.params), state, loop.evaluations, loop.timings(), placement.describe(),
                     stopped=stopped, final=final, config=trainer.config,
                     optimizer="a custom optax transformation" if optimizer is not None
                     else optimizers.describe(config))
