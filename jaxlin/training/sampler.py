"""Batch order: shuffled epochs drawn on the device, and the windows of it that compiled chunks read.

Step s of a run takes positions [s*B, (s+1)*B) of a stream of permutations, one
per epoch, each made from the seed and the epoch's number alone. So the order
of any step follows from (seed, step): a resumed run needs no sampler state.

This module owns the batch window (`epoch_window`); JAX is imported only inside what runs
on it. (The tutorial's host-side `next_batch`, which only the benchmark uses, is
`bench.common.NextBatch`.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import jax


@dataclasses.dataclass(frozen=True)
class Window:
    """Steps [start, start + n) read positions [offset, offset + n*B) of the concatenation of
    epochs first_epoch .. first_epoch + num_epochs - 1."""

    first_epoch: int
    num_epochs: int
    offset: int


def epoch_window(start_step: int, num_steps: int, batch_size: int, num_examples: int) -> Window:
    """The epochs a chunk of `num_steps` batches from `start_step` may touch, and where it starts.

    The number of epochs depends on `num_steps` only (not on where the chunk starts), so every
    chunk of one length has an order of one length: one compiled program serves them all."""
    first = start_step * batch_size
    return Window(first // num_examples, (num_steps * batch_size - 1) // num_examples + 2,
                  first % num_examples)


_PACKED_SORT_LIMIT = 1 << 16


def shuffled_epoch(key: jax.Array, num_examples: int) -> jax.Array:
    """A random permutation of range(num_examples), made on the device (see `_shuffled_epoch`)."""
    return _jitted_shuffled_epoch()(key, num_examples)


def epoch_permutation(key: jax.Array, epoch: int, num_examples: int) -> jax.Array:
    """`shuffled_epoch` of `fold_in(key, epoch)`, in one compiled program (the same bits as the two
    calls: each program a run needs is traced and lowered in every process, even from the cache)."""
    return _jitted_epoch_permutation()(key, np.uint32(epoch), num_examples)


@functools.cache
def _jitted_shuffled_epoch():
    import jax

    return jax.jit(_shuffled_epoch, static_argnums=1)


@functools.cache
def _jitted_epoch_permutation():
    import jax

    return jax.jit(lambda key, epoch, num_examples: _shuffled_epoch(jax.random.fold_in(key, epoch), num_examples),
                   static_argnums=2)


def _shuffled_epoch(key, num_examples: int):
    """A random permutation of range(num_examples), made on the device.

    XLA's CPU sort is several times faster on one uint32 array than on key-value
    pairs, so for up to 2**16 examples each of two shuffle rounds sorts random
    high bits packed with positions in the low 16 bits (two rounds, as
    `jax.random.permutation` does, to wash out ties). Larger sets use
    `jax.random.permutation`.
    """
    import jax
    import jax.numpy as jnp

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

    def __init__(self, key: jax.Array, num_examples: int, batch_size: int, place=lambda order: order):
        """`place` puts each window's order where the compiled chunk reads it (every device of a mesh)."""
        self.key, self.num_examples, self.batch_size, self.place = key, num_examples, batch_size, place
        self._epochs: dict[int, jax.Array] = {}
        self._orders: dict[tuple[int, int], jax.Array] = {}

    def permutation(self, epoch: int) -> jax.Array:
        if epoch not in self._epochs:
            self._epochs = {e: p for e, p in self._epochs.items() if e >= epoch - 1}
            self._epochs[epoch] = epoch_permutation(self.key, epoch, self.num_examples)
        return self._epochs[epoch]

    def num_epochs_spanned(self, num_steps: int) -> int:
        """How many epochs a window of `num_steps` batches may touch: fixes the order's length."""
        return epoch_window(0, num_steps, self.batch_size, self.num_examples).num_epochs

    def window(self, start_step: int, num_steps: int) -> tuple[jax.Array, int]:
        """(order, offset): step start_step + i reads order[offset + i*B : offset + (i+1)*B]."""
        import jax.numpy as jnp

        window = epoch_window(start_step, num_steps, self.batch_size, self.num_examples)
        key = (window.first_epoch, window.num_epochs)
        if key not in self._orders:
            epochs = [self.permutation(e) for e in range(window.first_epoch, window.first_epoch + window.num_epochs)]
            self._orders = {key: self.place(jnp.concatenate(epochs))}
        return self._orders[key], window.offset

    def warm_up(self, num_steps: int) -> jax.Array:
        """Compiles what windows of `num_steps` need, on a throwaway order; returns it."""
        import jax
        import jax.numpy as jnp

        throwaway = epoch_permutation(self.key, 0xFFFFFFFF, self.num_examples)
        return jax.block_until_ready(self.place(jnp.concatenate([throwaway] * self.num_epochs_spanned(num_steps))))

    def batch_indices(self, start_step: int, num_steps: int) -> np.ndarray:
        """Host copy of the indices of steps [start_step, start_step + num_steps), shape (num_steps, B)."""
        order, offset = self.window(start_step, num_steps)
        size = num_steps * self.batch_size
        return np.asarray(order[offset:offset + size]).reshape(num_steps, self.batch_size)


def check_window(order_length: int, offset: int, batch_size: int, num_steps: int) -> None:
    """Raises ValueError unless order[offset : offset + num_steps*batch_size] lies inside the order.

    The fused chunk reads the order with `dynamic_slice`, which clamps instead of failing:
    a short order would silently repeat its last batch.
    """
    needed = offset + num_steps * batch_size
    if offset < 0 or needed > order_length:
        raise ValueError(
            f"batch order too short: {num_steps} steps of {batch_size} from offset {offset} need "
            f"{needed} indices, the order holds {order_length}")
