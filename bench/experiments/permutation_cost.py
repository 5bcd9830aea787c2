# Cost of one on-device permutation of 55,000 indices, by method (XLA CPU).
# Run from the repo root: JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/permutation_cost.py
import os
import time, numpy as np, jax, jax.numpy as jnp
N=55000
k=jax.random.key(0)
def t(f, name):
    jax.block_until_ready(f(k))
    ts=[]
    for i in range(10):
        s=time.perf_counter(); jax.block_until_ready(f(jax.random.fold_in(k,i))); ts.append(time.perf_counter()-s)
    print(f"{name}: {np.median(ts)*1e3:.2f} ms")
t(jax.jit(lambda k: jax.random.permutation(k, N)), 'jax.random.permutation')
t(jax.jit(lambda k: jnp.argsort(jax.random.bits(k,(N,)))), 'argsort bits')
t(jax.jit(lambda k: jnp.sort(jax.random.bits(k,(N,)))), 'sort u32')
t(jax.jit(lambda k: jnp.sort(jax.random.uniform(k,(N,)))), 'sort f32')
t(jax.jit(lambda k: jax.lax.sort((jax.random.bits(k,(N,)), jnp.arange(N, dtype=jnp.int32)), num_keys=1)[1]), 'lax.sort kv')
t(jax.jit(lambda k: jax.lax.sort((jax.random.bits(k,(N,)), jnp.arange(N, dtype=jnp.int32)), num_keys=1, is_stable=False)[1]), 'lax.sort kv unstable')
t(jax.jit(lambda k: jax.random.bits(k,(N,))), 'bits only')
t(jax.jit(lambda k: jnp.sort(jax.random.bits(k,(N,)), stable=False)), 'sort u32 unstable')
