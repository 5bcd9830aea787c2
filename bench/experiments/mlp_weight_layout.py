"""The MLP's fused chunk (784-256-10, SGD 0.1) with its weights stored as (in, out) as jaxlin stores them,
as (out, in) (the dots then contract the other way), and with only the first layer transposed; interleaved
rounds of one compiled chunk each, median and best in µs/step. From the repo root:
`python bench/experiments/mlp_weight_layout.py BATCH STEPS` (e.g. 100 200, 1000 40, 10000 5; JAXLIN_DATA_DIR set).
"""
import os
import sys
import time, statistics, jax, jax.numpy as jnp, numpy as np, optax
from jaxlin.training.trainer import make_fused_train
from jaxlin.data.datasets import load_idx_dir
B = int(sys.argv[1]); K = int(sys.argv[2])
d = load_idx_dir(os.environ["JAXLIN_DATA_DIR"])
X = jnp.asarray(d.train.images_uint8); Y = jnp.asarray(d.train.labels)
order = jnp.asarray(np.random.default_rng(0).permutation(55000 * 4)[: K * B] % 55000, jnp.int32)
opt = optax.sgd(0.1)
k1, k2 = jax.random.split(jax.random.key(0))
W1 = jax.random.normal(k1, (784, 256)) * 0.05; W2 = jax.random.normal(k2, (256, 10)) * 0.05
plain = [{"w": W1, "b": jnp.zeros(256)}, {"w": W2, "b": jnp.zeros(10)}]
trans = [{"w": W1.T.copy(), "b": jnp.zeros(256)}, {"w": W2.T.copy(), "b": jnp.zeros(10)}]
def ap_plain(p, x):
    h = jax.nn.relu(x @ p[0]["w"] + p[0]["b"]); return h @ p[1]["w"] + p[1]["b"]
def ap_trans(p, x):
    h = jax.nn.relu(x @ p[0]["w"].T + p[0]["b"]); return h @ p[1]["w"].T + p[1]["b"]
def ap_mixed(p, x):  # first transposed, second plain
    h = jax.nn.relu(x @ p[0]["w"].T + p[0]["b"]); return h @ p[1]["w"] + p[1]["b"]
mixed = [trans[0], plain[1]]
V = {"plain": (ap_plain, plain), "transposed": (ap_trans, trans), "first transposed": (ap_mixed, mixed)}
C = {}
for n, (ap, p0) in V.items():
    f = make_fused_train(ap, opt)
    st = [jax.tree.map(jnp.copy, p0), opt.init(p0)]
    c = f.lower(*st, X, Y, order, 0, batch_size=B, num_steps=K).compile()
    st[0], st[1], l = c(*st, X, Y, order, 0); jax.block_until_ready(l)
    C[n] = (c, st)
ts = {n: [] for n in V}
for r in range(7):
    for n, (c, st) in C.items():
        t = time.perf_counter(); st[0], st[1], l = c(*st, X, Y, order, 0); jax.block_until_ready(l); ts[n].append((time.perf_counter() - t) / K)
for n in V: print(f"B={B} {n:18s} median {statistics.median(ts[n])*1e6:8.1f} best {min(ts[n])*1e6:8.1f} us/step")
