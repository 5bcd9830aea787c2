# The fused loop plain vs under a vmap over one model: XLA CPU picks other dot layouts.
# Run from the repo root: JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/vmap_singleton.py
import os
import time, functools, numpy as np, jax, jax.numpy as jnp, optax
import jaxlin.models as M
from jaxlin.data.datasets import load_datasets
from jaxlin.training.trainer import make_fused_train, fused_train_chunk
d = load_datasets('mnist', os.environ['JAXLIN_DATA_DIR'])
X = jnp.asarray(d.train.images_uint8); Y = jnp.asarray(d.train.labels)
order = jnp.asarray(np.random.default_rng(0).permutation(55000 * 2) % 55000, jnp.int32)
def timeit(name, f, K, reps=7):
    out = f(); ts=[]
    for _ in range(reps):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    print(f"{name}: {np.median(ts)/K*1e6:.1f} us/step (min {min(ts)/K*1e6:.1f})", flush=True)
    return out
for name, hidden, lr, K, B in (("linear", (), 0.5, 1000, 100), ("mlp", (256,), 0.1, 300, 100), ("linear", (), 0.5, 100, 1000), ("mlp", (256,), 0.1, 50, 1000)):
    model = M.get_model(name, hidden_sizes=hidden or (256,))
    params = model.init(jax.random.key(0)); opt = optax.sgd(lr)
    fused = make_fused_train(model.apply, opt)
    a = timeit(f"{name} b{B} plain", lambda: jax.block_until_ready(fused(jax.tree.map(jnp.copy, params), opt.init(params), X, Y, order, 0, batch_size=B, num_steps=K)), K)
    chunk = functools.partial(fused_train_chunk(model.apply, opt), batch_size=B, num_steps=K)
    v = jax.jit(jax.vmap(chunk, in_axes=(0, 0, None, None, None, None)))
    p1 = jax.tree.map(lambda x: x[None], params)
    b = timeit(f"{name} b{B} vmap1", lambda: jax.block_until_ready(v(p1, jax.vmap(opt.init)(p1), X, Y, order, 0)), K)
    print("   max abs diff", max(float(jnp.abs(p - q[0]).max()) for p, q in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0]))))
