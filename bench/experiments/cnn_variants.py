"""The CNN's training step (batch 100, Adam) in variants of its layers: what makes XLA's CPU backend slow.

Each variant is the same network (3x3 convolutions of 32 and 64 channels, 2x2 max pooling, dense 256,
10 logits) from the same params; only how a layer is written changes:

- pool: `lax.reduce_window` (JAX's gradient: select-and-scatter), a reshape and `max` (JAX's gradient of a
  reduction: an equality mask divided by the tie count), or jaxlin's `max_pool_2x2` (a custom_vjp giving the
  gradient to the first maximum, elementwise);
- order: ReLU(conv + b) then pool, or pool then ReLU(. + b) (the same values on a quarter of the elements);
- first convolution: `lax.conv_general_dilated`, or nine shifted copies times a (9, 32) matrix
  (`jaxlin.models.conv3x3_same` for one input channel);
- who computes the convolutions: YNNPACK (XLA's CPU default in jaxlib 0.10) or XLA's own emitter (the compile
  option of `jaxlin.runtime.cpu_convolutions`), each variant compiled both ways.

One jitted update per call (`jaxlin.training.trainer.make_update_fn`), interleaved rounds after a warm-up;
prints the median and the best of the rounds in ms/step. From the repo root:
`python bench/experiments/cnn_variants.py` (PyTorch's step is timed beside them when torch is installed).
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlin.models import conv3x3_same, get_model, max_pool_2x2
from jaxlin.runtime import cpu_convolutions
from jaxlin.training.trainer import make_update_fn

BATCH, ROUNDS, CALLS = 100, 7, 4


def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def pool_reduce_window(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def pool_reshape_max(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def cnn_apply(first_conv, pool, pool_first):
    def apply(params, images):
        x = images.reshape(-1, 28, 28, 1)
        for name, conv in (("conv1", first_conv), ("conv2", lax_conv)):
            x = conv(x, params[name]["w"])
            if pool_first:
                x = jax.nn.relu(pool(x) + params[name]["b"])
            else:
                x = pool(jax.nn.relu(x + params[name]["b"]))
        x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["dense"]["w"] + params["dense"]["b"])
        return x @ params["out"]["w"] + params["out"]["b"]
    return apply


VARIANTS = {
    "reduce_window, relu first (jaxlin before)": cnn_apply(lax_conv, pool_reduce_window, False),
    "reshape-max, relu first": cnn_apply(lax_conv, pool_reshape_max, False),
    "reshape-max, pool first": cnn_apply(lax_conv, pool_reshape_max, True),
    "max_pool_2x2, pool first": cnn_apply(lax_conv, max_pool_2x2, True),
    "max_pool_2x2, relu first, conv1 as matmul": cnn_apply(conv3x3_same, max_pool_2x2, False),
    "max_pool_2x2, pool first, conv1 as matmul (jaxlin now)": cnn_apply(conv3x3_same, max_pool_2x2, True),
}


def torch_step(images, labels):
    """PyTorch eager's step of the same network (NCHW, its own init), or None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(7 * 7 * 64, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 10))
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.tensor(np.asarray(images).reshape(-1, 1, 28, 28))
    y = torch.tensor(np.asarray(labels), dtype=torch.long)

    def step():
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def main(names):
    model, optimizer = get_model("cnn"), optax.adam(1e-3)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((BATCH, 784), np.float32))
    labels = jnp.asarray(rng.integers(0, 10, BATCH).astype(np.int32))
    params = model.init(jax.random.key(0))
    steps = {}
    for name in names:
        lowered = jax.jit(make_update_fn(VARIANTS[name], optimizer)).lower(
            params, optimizer.init(params), images, labels)
        for convolutions in ("ynnpack", "xla"):
            update = lowered.compile(cpu_convolutions.compiler_options(convolutions))
            state = [jax.tree.map(jnp.copy, params), optimizer.init(params)]

            def call(update=update, state=state):
                state[0], state[1], loss = update(*state, images, labels)
                return loss
            steps[f"{name}; {convolutions} convolutions"] = call
    torch = torch_step(images, labels)
    if torch is not None:
        steps["PyTorch eager (NCHW)"] = torch
    for call in steps.values():  # warm-up
        call()
    times = {name: [] for name in steps}
    for _ in range(ROUNDS):
        for name, call in steps.items():
            start = time.perf_counter()
            for _ in range(CALLS):
                loss = call()
            jax.block_until_ready(loss) if not hasattr(loss, "item") else loss.item()
            times[name].append((time.perf_counter() - start) / CALLS)
    for name, seconds in times.items():
        print(f"{name:80s} median {statistics.median(seconds) * 1e3:6.1f}  best {min(seconds) * 1e3:6.1f} ms/step")


if __name__ == "__main__":
    main(sys.argv[1:] or list(VARIANTS))
