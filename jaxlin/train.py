"""Training: loss, optimizer, the per-step update and the fused device-resident loop.

The fused loop keeps the uint8 training set on the device and runs a chunk of
steps inside one compiled `lax.scan`; the host only walks over chunks, which end
at evaluations. Batches come from `EpochSampler`: shuffled epochs without
replacement, drawn on the device from a PRNG key, like the tutorial's `next_batch`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlin.config import Config, ConfigError
from jaxlin.data import Datasets
from jaxlin.evaluate import make_accuracy_fn, to_float_images
from jaxlin.models import Model


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""

    def __init__(self, step: int, loss: float):
        super().__init__(
            f"training diverged at step {step}: loss is {loss} "
            f"(try a smaller learning rate)"
        )
        self.step = step
        self.loss = loss


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


def make_optimizer(config: Config) -> optax.GradientTransformation:
    if config.optimizer == "sgd":
        return optax.sgd(config.learning_rate)
    if config.optimizer == "momentum":
        return optax.sgd(config.learning_rate, momentum=config.momentum)
    if config.optimizer == "adam":
        return optax.adam(config.learning_rate)
    raise ConfigError(f"unknown optimizer {config.optimizer!r}")


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy averaged over the batch (labels are class ids)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_update_fn(apply_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """One gradient step: (params, opt_state, images, labels) -> (params, opt_state, loss)."""

    def update(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy_loss(apply_fn(p, images), labels))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return update


def make_train_step(apply_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """The per-step path: a jitted update fed with host batches of float images."""
    return jax.jit(make_update_fn(apply_fn, optimizer), donate_argnums=(0, 1))


def fused_train_chunk(apply_fn: Callable, optimizer: optax.GradientTransformation, unroll: int = 1) -> Callable:
    """The fused path's body, not yet jitted (so it can be vmapped over many models):

    (params, opt_state, train_uint8, train_labels, order, offset, batch_size, num_steps)
    -> (params, opt_state, losses[num_steps]), where step i trains on the examples
    order[offset + i*B : offset + (i+1)*B] (see `EpochSampler.window`).
    """
    update = make_update_fn(apply_fn, optimizer)

    def train_chunk(params, opt_state, images_uint8, labels, order, offset, batch_size, num_steps):
        def body(carry, step):
            indices = jax.lax.dynamic_slice(order, (offset + step * batch_size,), (batch_size,))
            # The sampler's indices are in bounds: promising it spares the gather its clamping.
            images = to_float_images(images_uint8.at[indices].get(mode="promise_in_bounds"))
            params, opt_state, loss = update(*carry, images, labels.at[indices].get(mode="promise_in_bounds"))
            return (params, opt_state), loss

        steps = jnp.arange(num_steps, dtype=jnp.int32)
        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), steps, unroll=unroll)
        return params, opt_state, losses

    return train_chunk


def make_fused_train(apply_fn: Callable, optimizer: optax.GradientTransformation, unroll: int = 1) -> Callable:
    """`fused_train_chunk` jitted, with batch_size and num_steps static and the state donated."""
    return jax.jit(fused_train_chunk(apply_fn, optimizer, unroll),
                   static_argnames=("batch_size", "num_steps"), donate_argnums=(0, 1))


_PACKED_SORT_LIMIT = 1 << 16


@functools.partial(jax.jit, static_argnums=1)
def shuffled_epoch(key: jax.Array, num_examples: int) -> jax.Array:
    """A random permutation of range(num_examples), made on the device.

    XLA's CPU sort is several times faster on one uint32 array than on key-value
    pairs, so for up to 2**16 examples each of two shuffle rounds sorts random
    high bits packed with positions in the low 16 bits (two rounds, as
    `jax.random.permutation` does, to wash out ties). Larger sets use
    `jax.random.permutation`.
    """
    if num_examples > _PACKED_SORT_LIMIT:
        return jax.random.permutation(key, num_examples)
    positions = jnp.arange(num_examples, dtype=jnp.uint32)
    order = positions
    for round_key in jax.random.split(key, 2):
        high = jax.random.bits(round_key, (num_examples,), jnp.uint32) & jnp.uint32(0xFFFF0000)
        order = order[jnp.sort(high | positions) & jnp.uint32(0xFFFF)]
    return order.astype(jnp.int32)


class EpochSampler:
    """Batch indices from a stream of shuffled epochs (each a fresh permutation).

    Step s takes positions [s*B, (s+1)*B) of the concatenated permutations, so a
    batch that crosses an epoch ends one epoch and starts the next, as
    `next_batch` did. Each epoch's permutation is made once, on the device.
    """

    def __init__(self, key: jax.Array, num_examples: int, batch_size: int):
        self.key, self.num_examples, self.batch_size = key, num_examples, batch_size
        self._epochs: dict[int, jax.Array] = {}
        self._orders: dict[tuple[int, int], jax.Array] = {}

    def permutation(self, epoch: int) -> jax.Array:
        if epoch not in self._epochs:
            self._epochs = {e: p for e, p in self._epochs.items() if e >= epoch - 1}
            self._epochs[epoch] = shuffled_epoch(jax.random.fold_in(self.key, epoch), self.num_examples)
        return self._epochs[epoch]

    def num_epochs_spanned(self, num_steps: int) -> int:
        """How many epochs a window of `num_steps` batches may touch: fixes the order's length."""
        return (num_steps * self.batch_size - 1) // self.num_examples + 2

    def window(self, start_step: int, num_steps: int) -> tuple[jax.Array, int]:
        """(order, offset): step start_step + i reads order[offset + i*B : offset + (i+1)*B]."""
        first = start_step * self.batch_size
        first_epoch, count = first // self.num_examples, self.num_epochs_spanned(num_steps)
        if (first_epoch, count) not in self._orders:
            epochs = [self.permutation(e) for e in range(first_epoch, first_epoch + count)]
            self._orders = {(first_epoch, count): jnp.concatenate(epochs)}
        return self._orders[first_epoch, count], first - first_epoch * self.num_examples

    def warm_up(self, num_steps: int) -> jax.Array:
        """Compiles what windows of `num_steps` need, on a throwaway order; returns it."""
        throwaway = shuffled_epoch(jax.random.fold_in(self.key, 0xFFFFFFFF), self.num_examples)
        return jax.block_until_ready(jnp.concatenate([throwaway] * self.num_epochs_spanned(num_steps)))

    def batch_indices(self, start_step: int, num_steps: int) -> np.ndarray:
        """Host copy of the indices of steps [start_step, start_step + num_steps), shape (num_steps, B)."""
        order, offset = self.window(start_step, num_steps)
        size = num_steps * self.batch_size
        return np.asarray(order[offset:offset + size]).reshape(num_steps, self.batch_size)


def chunk_lengths(num_steps: int, eval_steps: Iterable[int], steps_per_call: int) -> list[tuple[int, int]]:
    """(start, length) chunks covering [0, num_steps) that end at every evaluation step."""
    boundaries = sorted({s for s in eval_steps if 0 < s < num_steps} | {num_steps})
    chunks, start = [], 0
    for end in boundaries:
        while start < end:
            length = min(steps_per_call, end - start)
            chunks.append((start, length))
            start += length
    return chunks


def resolve_device(name: str) -> jax.Device:
    if name == "auto":
        return jax.devices()[0]
    try:
        return jax.devices(name)[0]
    except RuntimeError as err:
        raise ConfigError(
            f"--device {name}: JAX sees no {name.upper()} here ({err}); "
            f"for GPUs install jaxlin[gpu] on a machine with CUDA"
        ) from err


@dataclasses.dataclass
class FitResult:
    params: Any
    evaluations: list[dict]  # {"step", "test_accuracy", "train_loss"}
    timings: dict
    device: str


def default_eval_steps(config: Config) -> list[int]:
    return sorted(set(range(0, config.num_steps, config.eval_every)) | {config.num_steps})


class Trainer:
    """Compiled training and evaluation functions bound to device-resident data."""

    def __init__(self, config: Config, data: Datasets, model: Model, device: jax.Device):
        self.config, self.model, self.device = config, model, device
        self.optimizer = make_optimizer(config)
        key = jax.random.key(config.seed)
        init_key, self.sample_key = jax.random.split(key)
        put = lambda x: jax.device_put(x, device)
        self.train_images_uint8 = put(data.train.images_uint8)
        self.train_labels = put(data.train.labels)
        # The per-step path feeds float batches from the host, as the tutorial did.
        self.host_train_images = data.train.images if config.loop == "per-step" else None
        self.host_train_labels = data.train.labels
        self.accuracy = make_accuracy_fn(model.apply, put(data.test.images_uint8), put(data.test.labels))
        self.sampler = EpochSampler(self.sample_key, len(data.train), config.batch_size)
        self._init_key = init_key
        self._fused = make_fused_train(model.apply, self.optimizer, config.unroll)
        self._step = make_train_step(model.apply, self.optimizer)
        self._compiled: dict[int, Callable] = {}

    def init_state(self) -> TrainState:
        params = jax.device_put(self.model.init(self._init_key), self.device)
        return TrainState(params, self.optimizer.init(params))

    def compile(self, state: TrainState, lengths: Iterable[int]) -> float:
        """Compiles ahead of time what chunks of `lengths` steps need; returns the seconds taken."""
        start = time.perf_counter()
        batch_size = self.config.batch_size
        for length in sorted(set(lengths) - set(self._compiled)):
            order = self.sampler.warm_up(length)
            if self.config.loop == "fused":
                self._compiled[length] = self._fused.lower(
                    *state, self.train_images_uint8, self.train_labels, order, 0,
                    batch_size=batch_size, num_steps=length).compile()
            else:
                self._compiled[length] = self._step.lower(
                    *state, self.host_train_images[:batch_size], self.host_train_labels[:batch_size]).compile()
        jax.block_until_ready(self.accuracy(state.params))
        return time.perf_counter() - start

    def run_chunk(self, state: TrainState, start_step: int, num_steps: int) -> tuple[TrainState, jax.Array]:
        """`num_steps` updates from `start_step`; returns the new state and per-step losses."""
        if self.config.loop == "fused":
            order, offset = self.sampler.window(start_step, num_steps)
            params, opt_state, losses = self._compiled[num_steps](
                *state, self.train_images_uint8, self.train_labels, order, offset)
            return TrainState(params, opt_state), losses
        step_fn, losses = self._compiled[1], []
        for indices in self.sampler.batch_indices(start_step, num_steps):
            params, opt_state, loss = step_fn(*state, self.host_train_images[indices], self.host_train_labels[indices])
            state = TrainState(params, opt_state)
            losses.append(loss)
        return state, jnp.stack(losses)


def check_finite(losses: np.ndarray, start_step: int) -> None:
    """Raises DivergenceError naming the first step (1-based) whose loss is not finite."""
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise DivergenceError(start_step + int(bad[0]) + 1, float(losses[bad[0]]))


def fit(config: Config, data: Datasets, model: Model, eval_steps: Iterable[int] | None = None,
        progress: bool = True) -> FitResult:
    """Trains `model` for `config.num_steps`, evaluating test accuracy at `eval_steps`."""
    config.validate(len(data.train))
    device = resolve_device(config.device)
    eval_steps = sorted(set(default_eval_steps(config) if eval_steps is None else eval_steps))
    chunks = chunk_lengths(config.num_steps, eval_steps, config.steps_per_call)
    with jax.default_device(device):
        trainer = Trainer(config, data, model, device)
        state = trainer.init_state()
        lengths = {1} if config.loop == "per-step" else {n for _, n in chunks}
        compile_seconds = trainer.compile(state, lengths)
        state, evaluations, train_seconds = _train_loop(trainer, state, chunks, eval_steps, progress)
    steps_per_second = config.num_steps / train_seconds if train_seconds > 0 else float("nan")
    timings = {"compile_seconds": compile_seconds, "train_seconds": train_seconds,
               "steps_per_second": steps_per_second}
    return FitResult(jax.device_get(state.params), evaluations, timings, str(device))


def _train_loop(trainer: Trainer, state: TrainState, chunks, eval_steps, progress: bool):
    from tqdm.auto import tqdm

    def record(step, loss):
        accuracy = trainer.accuracy(state.params)
        evaluations.append({"step": step, "test_accuracy": accuracy, "train_loss": loss})
        return accuracy

    evaluations, train_seconds, eval_set = [], 0.0, set(eval_steps)
    if 0 in eval_set:
        record(0, None)
    bar = tqdm(total=trainer.config.num_steps, disable=not progress, unit="step", leave=False)
    with bar:
        for start, length in chunks:
            tick = time.perf_counter()
            state, losses = trainer.run_chunk(state, start, length)
            losses = np.asarray(jax.block_until_ready(losses))
            train_seconds += time.perf_counter() - tick
            check_finite(losses, start)
            end, loss = start + length, float(losses[-1])
            postfix = {"loss": f"{loss:.4f}"}
            if end in eval_set:
                postfix["test_acc"] = f"{record(end, float(losses.mean())):.2%}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(length)
    return state, evaluations, train_seconds
