"""The fused CNN chunk in its forms: a lax.scan of K steps, the same scan fully unrolled, and the host loop
(one compiled step called K times, `jaxlin.runtime.chunk_form`), against the per-step loop's update.

XLA's CPU backend runs a convolution inside a loop body several times slower than outside one; a scan of
one step is still a loop unless it is written without one (`jaxlin.training.trainer.scan_steps`). Adam,
batch 100, real MNIST batches gathered on the device; median and best of interleaved rounds in ms/step.
From the repo root: `JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/chunk_forms.py [K]`.
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlin.data.datasets import load_idx_dir
from jaxlin.models import get_model
from jaxlin.runtime.chunk_form import HostLoopChunk
from jaxlin.training.trainer import make_fused_train, make_train_step

BATCH, ROUNDS = 100, 5


def main(k: int):
    data = load_idx_dir(os.environ["JAXLIN_DATA_DIR"])
    images, labels = jnp.asarray(data.train.images_uint8), jnp.asarray(data.train.labels)
    model, optimizer = get_model("cnn"), optax.adam(1e-3)
    order = jnp.arange(k * BATCH, dtype=jnp.int32)
    params = model.init(jax.random.key(0))

    def fresh():
        copied = jax.tree.map(jnp.copy, params)
        return [copied, optimizer.init(copied)]

    def compiled(unroll, num_steps):
        fused = make_fused_train(model.apply, optimizer, unroll, model=model)
        return fused.lower(*fresh(), images, labels, order, 0, batch_size=BATCH, num_steps=num_steps).compile()

    chunks = {
        f"scan of {k}": compiled(1, k),
        f"scan of {k}, unrolled": compiled(k, k),
        "host loop of one-step chunks": HostLoopChunk(compiled(1, 1), num_carry=2, offset_at=5, start_at=None,
                                                       batch_size=BATCH, num_steps=k),
    }
    step = make_train_step(model.apply, optimizer)
    host_images, host_labels = data.train.images, data.train.labels

    def per_step(state):
        for i in range(k):
            rows = np.arange(i * BATCH, (i + 1) * BATCH)
            state[0], state[1], loss = step(*state, host_images[rows], host_labels[rows])
        return loss

    runs = {name: (lambda state, chunk=chunk: chunk(*state, images, labels, order, 0))
            for name, chunk in chunks.items()}
    states = {name: fresh() for name in [*runs, "per-step loop (host batches)"]}

    def run(name):
        state = states[name]
        if name in runs:
            state[0], state[1], losses = runs[name](state)
            return losses
        return per_step(state)

    names = list(states)
    for name in names:
        jax.block_until_ready(run(name))
    times = {name: [] for name in names}
    for _ in range(ROUNDS):
        for name in names:
            start = time.perf_counter()
            jax.block_until_ready(run(name))
            times[name].append((time.perf_counter() - start) / k)
    for name in names:
        median, best = statistics.median(times[name]) * 1e3, min(times[name]) * 1e3
        print(f"{name:32s} median {median:7.1f}  best {best:7.1f} ms/step")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
