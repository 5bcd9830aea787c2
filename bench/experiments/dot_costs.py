# The two matmuls of a linear step (forward, weight gradient) in XLA and NumPy.
# Run from the repo root: JAXLIN_DATA_DIR=../shared/data/mnist python bench/experiments/dot_costs.py
import os
import time, numpy as np, jax, jax.numpy as jnp
K=1000
rng=np.random.default_rng(0)
x=jnp.asarray(rng.random((100,784),np.float32)); g=jnp.asarray(rng.random((100,10),np.float32))
W=jnp.asarray(rng.random((784,10),np.float32)); Wt=W.T.copy()
def bench(f, name, reps=7):
    jax.block_until_ready(f()); ts=[]
    for _ in range(reps):
        t=time.perf_counter(); jax.block_until_ready(f()); ts.append(time.perf_counter()-t)
    print(f"{name}: {np.median(ts)/K*1e6:.2f} us/iter", flush=True)
def scan(body, init):
    return jax.jit(lambda c: jax.lax.scan(lambda c, i: (body(c), None), c, jnp.arange(K))[0])
f1 = scan(lambda W: W + 1e-9 * (x @ W).sum(), W); bench(lambda: f1(W), "fwd x@W (100x784x10)")
f2 = scan(lambda W: W + 1e-9 * (x.T @ g), W); bench(lambda: f2(W), "grad x.T@g (784x100x10)")
f3 = scan(lambda Wt: Wt + 1e-9 * (x @ Wt.T).sum(), Wt); bench(lambda: f3(Wt), "fwd x@Wt.T")
f4 = scan(lambda Wt: Wt + 1e-9 * (g.T @ x), Wt); bench(lambda: f4(Wt), "grad g.T@x (10x100x784)")
f5 = scan(lambda W: W + 1e-9, W); bench(lambda: f5(W), "just add")
xn, gn, Wn = map(np.asarray, (x, g, W))
for name, fn in [("np fwd", lambda: xn @ Wn), ("np grad", lambda: xn.T @ gn), ("np grad g.T@x", lambda: gn.T @ xn)]:
    t=time.perf_counter()
    for _ in range(K): fn()
    print(name, (time.perf_counter()-t)/K*1e6)
