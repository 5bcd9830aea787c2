"""The CNN update: one jitted step per call against the fused lax.scan chunk, rolled and unrolled."""
import time, jax, jax.numpy as jnp, numpy as np, optax
from jaxlin.models import get_model
from jaxlin.training.trainer import make_update_fn, make_fused_train
from jaxlin.data.datasets import load_idx_dir
import os
d = load_idx_dir(os.environ["JAXLIN_DATA_DIR"])  # the MNIST IDX directory
m = get_model("cnn"); opt = optax.adam(1e-3)
X = jnp.asarray(d.train.images_uint8); Y = jnp.asarray(d.train.labels)
upd = jax.jit(make_update_fn(m.apply, opt))
fused = make_fused_train(m.apply, opt)
K = 10
order = jnp.arange(K * 100, dtype=jnp.int32)
def fresh():
    p = m.init(jax.random.key(0)); return p, opt.init(p)
p, s = fresh()
imgs = d.train.images[:100]; labs = d.train.labels[:100]
p, s, l = upd(p, s, imgs, labs); jax.block_until_ready(l)
t = time.perf_counter()
for i in range(K):
    p, s, l = upd(p, s, imgs, labs)
jax.block_until_ready(l); print("per-step", (time.perf_counter() - t) / K)
p, s = fresh()
p, s, l = fused(p, s, X, Y, order, 0, batch_size=100, num_steps=K); jax.block_until_ready(l)
p, s = fresh()
t = time.perf_counter()
p, s, l = fused(p, s, X, Y, order, 0, batch_size=100, num_steps=K); jax.block_until_ready(l)
print("fused", (time.perf_counter() - t) / K)
for u in (2, 10):
    f = make_fused_train(m.apply, opt, unroll=u)
    p, s = fresh()
    p, s, l = f(p, s, X, Y, order, 0, batch_size=100, num_steps=K); jax.block_until_ready(l)
    p, s = fresh()
    t = time.perf_counter()
    p, s, l = f(p, s, X, Y, order, 0, batch_size=100, num_steps=K); jax.block_until_ready(l)
    print("fused unroll", u, (time.perf_counter() - t) / K)
