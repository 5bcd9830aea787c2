# Fused linear step with integer-label vs one-hot loss, and without a per-step loss output.
# Run from the repo root: JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/loss_variants.py
import os
import time, sys, numpy as np, jax, jax.numpy as jnp, optax
import jaxlin.training.trainer as T
from jaxlin.data.datasets import load_datasets
from jaxlin.models import get_model
d = load_datasets('mnist', os.environ['JAXLIN_DATA_DIR'])
m = get_model('linear'); opt = optax.sgd(0.5)
X = jnp.asarray(d.train.images_uint8); Y = jnp.asarray(d.train.labels)
K, B = 1000, 100
order = jnp.asarray(np.random.default_rng(0).permutation(55000 * 2) % 55000, jnp.int32)
def bench(name, reps=9):
    fused = T.make_fused_train(m.apply, opt, 1)
    def f():
        p = m.init(None); s = opt.init(p)
        return jax.block_until_ready(fused(p, s, X, Y, order, 0, batch_size=B, num_steps=K))
    out = f(); ts=[]
    for _ in range(reps):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    print(f"{name}: {np.median(ts)/K*1e6:.1f} us/step (min {min(ts)/K*1e6:.1f}) loss {out[2][-1]:.4f}", flush=True)
bench("integer-label loss")
T.cross_entropy_loss = lambda logits, labels: optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1])).mean()
bench("one-hot loss (optax)")
T.cross_entropy_loss = lambda logits, labels: -jnp.mean(jnp.sum(jax.nn.one_hot(labels, logits.shape[-1]) * jax.nn.log_softmax(logits), axis=-1))
bench("one-hot loss (log_softmax)")
# no loss output: grads only
def no_loss_update(apply_fn, optimizer):
    def update(params, opt_state, images, labels):
        grads = jax.grad(lambda p: T.cross_entropy_loss(apply_fn(p, images), labels))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.float32(0)
    return update
T.make_update_fn = no_loss_update
bench("no loss output")
