"""What XLA's CPU backend gives to YNNPACK, and what it costs: one training step of the MLP (batch 100 and
10,000, SGD) and of the CNN (batch 100, Adam) compiled with each value of the option
`xla_cpu_experimental_ynn_fusion_type` (jaxlib 0.10; no option: XLA's own choice, individual dots and
convolutions and some reductions), timed interleaved in one process, best and median of 5 rounds.

`jaxlin.runtime.cpu_convolutions` uses LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT (YNNPACK keeps the dots, XLA
computes the convolutions) for models with convolutions. From the repo root:
`python bench/experiments/ynn_fusion_types.py`.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlin.models import get_model
from jaxlin.training.trainer import make_update_fn

OPTION = "xla_cpu_experimental_ynn_fusion_type"
VALUES = {
    "XLA's choice (no option)": None,
    "INDIVIDUAL_DOT": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "INDIVIDUAL_CONVOLUTION": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "REDUCE": "LIBRARY_FUSION_TYPE_REDUCE",
}
CASES = [("mlp", 100, optax.sgd(0.1), 50), ("mlp", 10_000, optax.sgd(0.1), 2), ("cnn", 100, optax.adam(1e-3), 4)]


def main():
    rng = np.random.default_rng(0)
    for name, batch, optimizer, calls in CASES:
        model = get_model(name)
        images = jnp.asarray(rng.random((batch, 784), np.float32))
        labels = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
        params = model.init(jax.random.key(0))
        lowered = jax.jit(make_update_fn(model.apply, optimizer)).lower(params, optimizer.init(params), images, labels)
        runs = {}
        for label, value in VALUES.items():
            compiled = lowered.compile({OPTION: value} if value else {})
            state = [jax.tree.map(jnp.copy, params), optimizer.init(params)]
            state[0], state[1], loss = compiled(*state, images, labels)
            jax.block_until_ready(loss)
            runs[label] = (compiled, state, [])
        for _ in range(5):
            for compiled, state, times in runs.values():
                start = time.perf_counter()
                for _ in range(calls):
                    state[0], state[1], loss = compiled(*state, images, labels)
                jax.block_until_ready(loss)
                times.append((time.perf_counter() - start) / calls)
        for label, (_, _, times) in runs.items():
            print(f"{name} batch {batch:6d}  {label:26s} best {min(times) * 1e3:8.3f}  "
                  f"median {statistics.median(times) * 1e3:8.3f} ms/step")


if __name__ == "__main__":
    main()
