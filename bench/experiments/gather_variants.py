# Gathering a batch of 100 MNIST rows inside a scan: uint8 vs float32 data, gather forms.
# Run from the repo root: JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/gather_variants.py
import os
import time, numpy as np, jax, jax.numpy as jnp
from jaxlin.data.datasets import load_datasets
d = load_datasets('mnist', os.environ['JAXLIN_DATA_DIR'])
K, B = 1000, 100
Xu8 = jnp.asarray(d.train.images_uint8)
Xf = jnp.asarray(d.train.images)
Xu32 = jnp.asarray(d.train.images_uint8.view(np.uint32))  # (55000, 196)
Xu64 = jnp.asarray(d.train.images_uint8.view(np.uint64)) if False else None
order = jnp.asarray(np.random.default_rng(0).permutation(55000 * 2) % 55000, jnp.int32)
def bench(f, name, reps=7):
    f(); ts=[]
    for _ in range(reps):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    print(f"{name}: {np.median(ts)/K*1e6:.1f} us/step (min {min(ts)/K*1e6:.1f})", flush=True)
def loop(get):
    @jax.jit
    def f(order):
        def body(c, i):
            idx = jax.lax.dynamic_slice(order, (i * B,), (B,))
            x = get(idx)
            return c + x[:, ::7].sum() , None
        return jax.lax.scan(body, 0.0, jnp.arange(K))[0]
    return lambda: f(order).block_until_ready()
bench(loop(lambda idx: Xu8.at[idx].get(mode="promise_in_bounds").astype(jnp.float32) / 255.), "u8 gather+convert")
bench(loop(lambda idx: Xu8.at[idx].get(mode="promise_in_bounds").astype(jnp.float32)), "u8 gather+convert, no div")
bench(loop(lambda idx: Xu8[idx].astype(jnp.float32) / 255.), "u8 gather default mode")
bench(loop(lambda idx: Xf.at[idx].get(mode="promise_in_bounds")), "f32 gather")
bench(loop(lambda idx: jax.lax.bitcast_convert_type(Xu32.at[idx].get(mode="promise_in_bounds"), jnp.uint8).reshape(B, 784).astype(jnp.float32) / 255.), "u32 gather+bitcast")
bench(loop(lambda idx: jax.vmap(lambda i: jax.lax.dynamic_slice(Xu8, (i, 0), (1, 784))[0])(idx).astype(jnp.float32) / 255.), "vmap dynamic_slice u8")
bench(loop(lambda idx: jax.vmap(lambda i: jax.lax.dynamic_index_in_dim(Xf, i, keepdims=False))(idx)), "vmap dyn index f32")
ix = np.asarray(order[:B]); Xn = d.train.images_uint8
t=time.perf_counter()
for i in range(1000): x = Xn[np.asarray(order[i*B:(i+1)*B]) if False else ix].astype(np.float32)/255.
print("numpy gather+convert", (time.perf_counter()-t)/1000*1e6)
