"""The CNN's evaluation of the 10,000 test images: batches of 1,000, 500 and 250, with YNNPACK's and with
XLA's own convolutions (`jaxlin.runtime.cpu_convolutions`), through jaxlin's `predict` program; interleaved,
median and best of 5 in seconds. From the repo root: `JAXLIN_DATA_DIR=../shared/data/mnist python
bench/experiments/cnn_evaluation.py`.
"""
import os
import time, statistics, jax, jax.numpy as jnp, numpy as np
from jaxlin.models import get_model
from jaxlin.training.evaluate import MAX_UNROLLED_BATCHES, to_float_images
from jaxlin.data.datasets import load_idx_dir
from jaxlin.runtime import cpu_convolutions
d = load_idx_dir(os.environ["JAXLIN_DATA_DIR"])
m = get_model("cnn"); p = m.init(jax.random.key(0))


def predict_program(apply_fn):
    """jaxlin's prediction program (`jaxlin.training.evaluate.make_predict_fn`), unjitted, to compile both ways."""
    def predict(params, batches):
        classify = lambda batch: jnp.argmax(apply_fn(params, to_float_images(batch)), axis=-1)  # noqa: E731
        if batches.shape[0] <= MAX_UNROLLED_BATCHES:
            return jnp.concatenate([classify(batch) for batch in batches])
        return jax.lax.map(classify, batches).reshape(-1)
    return predict


runs = {}
for bs in (1000, 500, 250):
    batches = jnp.asarray(d.test.images_uint8.reshape(10000 // bs, bs, 784))
    low = jax.jit(predict_program(m.apply)).lower(p, batches)
    for tag in ("ynnpack", "xla"):
        c = low.compile(cpu_convolutions.compiler_options(tag)); jax.block_until_ready(c(p, batches))
        runs[(bs, tag)] = (c, batches, [])
for r in range(5):
    for k, (c, b, ts) in runs.items():
        t = time.perf_counter(); jax.block_until_ready(c(p, b)); ts.append(time.perf_counter() - t)
for k, (c, b, ts) in runs.items(): print(k, f"median {statistics.median(ts):.3f} best {min(ts):.3f} s")
