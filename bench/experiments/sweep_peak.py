"""How close a shared-batch sweep of linear models gets to the matmul peak, and what costs it.

Times `jaxlin.training.sweep.sweep_chunk` (1,000 steps, batch 100, one chunk) at M models against
variants: without the freezing of diverged members, with plain optax.sgd (learning rate
shared) instead of `inject_hyperparams`, and with scan unroll 2 and 4. And the same sweep
written by hand as one (784, M*10) matrix, without vmap; and the sweep's wide layout
(`sweep_chunk(..., wide=True)`, what `jaxlin sweep` now runs for dense models from 8 members),
also without the freeze mask. `--only-wide` times just the vmapped sweep and the wide
ones. Interleaved rounds (SWEEP_PEAK_ROUNDS, default 5), each variant's best, with the bench's
peak row (a 2048² matmul) timed in the same rounds. Run from the repo root:
`JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/sweep_peak.py 64 256`.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

from jaxlin import optimizers

from jaxlin.training import sweep
from jaxlin.data.datasets import load_idx_dir
from jaxlin.models import get_model
from jaxlin.training.sampler import EpochSampler

STEPS, BATCH = 1000, 100
ROUNDS = int(os.environ.get("SWEEP_PEAK_ROUNDS", "5"))  # interleaved rounds; each variant's best counts


def variant(model, m, freeze=True, inject=True, unroll=1, wide=False):
    if inject:
        opt = optimizers.make_injectable("sgd", learning_rate=0.5)
    else:
        opt = optax.sgd(0.5)
    chunk = sweep.sweep_chunk(model.apply, opt, unroll, shared_order=True, model=model, wide=wide)
    if not freeze:
        original = jnp.where
        def chunk_without_freeze(*args, **kwargs):
            # keep the update: no masking (broadcast as where would: the wide layout's frozen_at is (M,))
            jnp.where = lambda c, a, b: jnp.broadcast_to(a, jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b)))
            try:
                return chunk(*args, **kwargs)
            finally:
                jnp.where = original
        fn = chunk_without_freeze
    else:
        fn = chunk
    keys = jax.random.split(jax.random.key(0), m)
    params = jax.vmap(model.init)(keys)
    if inject:
        state = jax.vmap(lambda p, lr: optimizers.make_injectable("sgd", learning_rate=lr).init(p))(
            params, jnp.full((m,), 0.5))
    else:
        state = jax.vmap(opt.init)(params)
    frozen = jnp.full((m,), -1, jnp.int32)
    return jax.jit(fn, static_argnames=("batch_size", "num_steps")), (params, state, frozen)


def wide_variant(m):
    """The linear sweep written by hand as one (784, M*10) matrix: no vmap, no transposes."""
    def chunk(w, b, lr, images_uint8, labels, order, offset, start, batch_size, num_steps):
        def loss(w, b, x, y):
            logits = (x @ w).reshape(batch_size, m, 10) + b
            return optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.broadcast_to(y[:, None], (batch_size, m))).mean(0).sum()

        def body(carry, i):
            w, b = carry
            idx = jax.lax.dynamic_slice(order, (offset + i * batch_size,), (batch_size,))
            x = images_uint8[idx].astype(jnp.float32) / 255.0
            gw, gb = jax.grad(loss, argnums=(0, 1))(w, b, x, labels[idx])
            return (w - (jnp.repeat(lr, 10) * gw), b - lr[:, None] * gb), None

        (w, b), _ = jax.lax.scan(body, (w, b), jnp.arange(num_steps))
        return w, b

    state = (jnp.zeros((784, m * 10)), jnp.zeros((m, 10)), jnp.full((m,), 0.5))
    return jax.jit(chunk, static_argnames=("batch_size", "num_steps")), state


def main():
    data = load_idx_dir(os.environ["JAXLIN_DATA_DIR"])
    images, labels = jnp.asarray(data.train.images_uint8), jnp.asarray(data.train.labels)
    order, offset = EpochSampler(jax.random.key(0), len(data.train), BATCH).window(0, STEPS)
    model = get_model("linear")
    flops = 3.32e6
    a, b = (jax.random.normal(k, (2048, 2048), jnp.float32) for k in jax.random.split(jax.random.key(0)))
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    only_wide = "--only-wide" in sys.argv
    for m in [int(a) for a in sys.argv[1:] if a != "--only-wide"] or [64]:
        variants = {"vmapped sweep": variant(model, m), "wide layout": variant(model, m, wide=True),
                    "wide, no freeze": variant(model, m, freeze=False, wide=True), "wide by hand": wide_variant(m)}
        if not only_wide:
            variants.update({"no freeze": variant(model, m, freeze=False), "plain sgd": variant(model, m, inject=False),
                             "unroll 2": variant(model, m, unroll=2), "unroll 4": variant(model, m, unroll=4)})
        compiled = {}
        for name, (fn, state) in variants.items():
            compiled[name] = fn.lower(*state, images, labels, order, offset, 0, batch_size=BATCH,
                                      num_steps=STEPS).compile()
        best = {name: float("inf") for name in variants}
        peak_seconds = float("inf")
        for _ in range(ROUNDS):
            for name, (_fn, state) in variants.items():
                start = time.perf_counter()
                jax.block_until_ready(compiled[name](*state, images, labels, order, offset, 0))
                best[name] = min(best[name], time.perf_counter() - start)
            for _ in range(5):  # the bench's peak row (a 2048² float32 matmul), in the same rounds
                start = time.perf_counter()
                jax.block_until_ready(matmul(a, b))
                peak_seconds = min(peak_seconds, time.perf_counter() - start)
        peak = 2 * 2048**3 / peak_seconds / 1e9
        print(f"M={m:4d} peak (2048² matmul, best of {5 * ROUNDS}) {peak:6.1f} GFLOP/s")
        for name, seconds in best.items():
            print(f"M={m:4d} {name:14s} {best['vmapped sweep'] / seconds:5.2f}x of vmapped  "
                  f"{1e6 * seconds / STEPS:9.1f} us/step  "
                  f"{m * STEPS / seconds:9,.0f} model-steps/s  {flops * m * STEPS / seconds / 1e9:6.1f} GFLOP/s  "
                  f"{flops * m * STEPS / seconds / 1e9 / peak:4.0%} of peak")


if __name__ == "__main__":
    main()
