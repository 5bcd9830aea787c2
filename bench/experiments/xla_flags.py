# One fused linear run (1,000 steps, batch 100); run under XLA_FLAGS=... to compare flags.
# Run from the repo root: JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/xla_flags.py
import os
import time, sys, numpy as np, jax, jax.numpy as jnp, optax
import jaxlin.training.trainer as T
from jaxlin.models import get_model
rng = np.random.default_rng(0)
m = get_model('linear'); opt = optax.sgd(0.5)
X = jnp.asarray(rng.integers(0, 255, (55000, 784), dtype=np.uint8)); Y = jnp.asarray(rng.integers(0, 10, 55000).astype(np.int32))
K, B = 1000, 100
order = jnp.asarray(rng.permutation(55000 * 2) % 55000, jnp.int32)
fused = T.make_fused_train(m.apply, opt, 1)
def f():
    p = m.init(None); s = opt.init(p)
    return jax.block_until_ready(fused(p, s, X, Y, order, 0, batch_size=B, num_steps=K))
f(); ts=[]
for _ in range(9):
    t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
print(f"{np.median(ts)/K*1e6:.1f} us/step (min {min(ts)/K*1e6:.1f})", flush=True)
