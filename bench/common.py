"""What every contender shares: the data, the batch order, the model sizes, the worker protocol.

Imports numpy only, so a TensorFlow or PyTorch worker never loads JAX.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import time
from collections.abc import Callable

import numpy as np

from jaxlin.config import Config, INPUT_SIZE, NUM_CLASSES
from jaxlin.data.datasets import load_idx_dir

TARGET_ACCURACY = 0.918
LEARNING_RATE = Config().learning_rate  # the tutorial's 0.5
HIDDEN_SIZES = Config().hidden_sizes  # jaxlin's MLP: what `jaxlin train --model mlp` trains


# Models of dense layers only: what the TF reference (the tutorial's v1 graph) and the NumPy floor build.
DENSE_MODELS = ("linear", "mlp")
# Models whose starting params every framework loads alike (`initial_params`, built here in NumPy): the
# TF2, PyTorch and jaxlin contenders all train these. Other jaxlin models (a user's MODULE:NAME) are
# benchmarked by the jaxlin contenders only, from jaxlin's own `init`.
SHARED_MODELS = ("linear", "mlp", "cnn")
# The contenders that build fewer than SHARED_MODELS (the jaxlin ones build every model jaxlin trains).
CONTENDER_MODELS = {"tf_reference": DENSE_MODELS, "numpy_floor": DENSE_MODELS}

# jaxlin's CNN (jaxlin/models.py `_cnn_init`/`_cnn_apply`, restated here so that a TF or PyTorch worker needs
# no JAX; a test checks that they agree): 28x28x1 images, conv 3x3 (SAME) + ReLU + 2x2 max pool twice, then a
# dense ReLU layer and the logits. Its params: a dict of these layers, each {"w", "b"}; convolutions HWIO.
IMAGE_SIDE = 28
CNN_KERNEL, CNN_CHANNELS, CNN_DENSE = 3, (32, 64), 256
CNN_LAYERS = ("conv1", "conv2", "dense", "out")


def runs_model(contender: str, model: str) -> bool:
    if contender.startswith("jaxlin"):
        return True
    return model in CONTENDER_MODELS.get(contender, SHARED_MODELS)


def not_run_reason(contender: str, model: str) -> str:
    """Why `contender` does not train `model` (for a contender that `runs_model` says does not)."""
    built = CONTENDER_MODELS.get(contender, SHARED_MODELS)
    names = ", ".join(built[:-1]) + f" and {built[-1]}" if len(built) > 1 else built[0]
    return f"it builds only the {names} models" + ("" if model in SHARED_MODELS else
                                                  "; a user's model is timed by the jaxlin contenders")


def layer_sizes(model: str) -> list[int]:
    """The dense layers of jaxlin's linear model and MLP, for frameworks that build their own."""
    return [INPUT_SIZE, *(HIDDEN_SIZES if model == "mlp" else ()), NUM_CLASSES]


def cnn_shapes() -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (weights, biases) shapes of jaxlin's CNN, in CNN_LAYERS order, in jaxlin's layout: convolution
    weights HWIO (height, width, in, out), the dense layer's rows in NHWC flattening order (h, w, channel)."""
    (c1, c2), k = CNN_CHANNELS, CNN_KERNEL
    flat = (IMAGE_SIDE // 4) ** 2 * c2
    return [((k, k, 1, c1), (c1,)), ((k, k, c1, c2), (c2,)), ((flat, CNN_DENSE), (CNN_DENSE,)),
            ((CNN_DENSE, NUM_CLASSES), (NUM_CLASSES,))]


def learning_rate(model: str) -> float:
    # The tutorial's 0.5 for the linear model; plain SGD at 0.1 keeps the ReLU networks stable.
    return LEARNING_RATE if model == "linear" else 0.1


def optimizer_config(model: str, optimizer: str | None = None, rate: float | None = None) -> Config:
    """The jaxlin settings that name the optimizer the JAX contenders train `model` with: by default the
    tutorial's plain SGD at `learning_rate(model)` (what every framework here runs, so the rows compare),
    else `--optimizer` (a name jaxlin knows, or MODULE:NAME where jaxlin takes one) at `--learning-rate`
    (default: that same rate). jaxlin builds it (`jaxlin.training.trainer.make_optimizer`), as for a run."""
    return Config(optimizer=optimizer or "sgd", learning_rate=rate or learning_rate(model))


def load_data(data_dir: str):
    """uint8 and float32 views of the tutorial's train and test splits."""
    data = load_idx_dir(data_dir)
    return {
        "train_uint8": data.train.images_uint8,
        "train_images": data.train.images,
        "train_labels": data.train.labels,
        "test_uint8": data.test.images_uint8,
        "test_images": data.test.images,
        "test_labels": data.test.labels,
    }


def initial_params(model: str, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same starting point for every framework, as (weights, biases) per layer in jaxlin's layout: zeros
    (linear) or He-normal from `seed` (the MLP; the CNN, in CNN_LAYERS order, see `cnn_shapes`), biases zero.
    Built once in NumPy, so TensorFlow, PyTorch and JAX start from the same numbers."""
    if model == "cnn":
        shapes = cnn_shapes()
    elif model in DENSE_MODELS:
        sizes = layer_sizes(model)
        shapes = [((a, b), (b,)) for a, b in zip(sizes[:-1], sizes[1:])]
    else:
        raise ValueError(f"no shared starting params for model {model!r}; shared: {', '.join(SHARED_MODELS)}")
    if model == "linear":
        return [(np.zeros(w, np.float32), np.zeros(b, np.float32)) for w, b in shapes]
    rng = np.random.default_rng(seed)
    # He-normal: fan-in is every weight feeding one output (for a convolution, kernel area x input channels).
    return [((rng.standard_normal(w) * np.sqrt(2.0 / np.prod(w[:-1]))).astype(np.float32), np.zeros(b, np.float32))
            for w, b in shapes]


def shared_params(model: str, seed: int = 0):
    """`initial_params` as jaxlin's params pytree (NumPy leaves): a list of {"w", "b"} layers for the linear
    model and the MLP, a dict of CNN_LAYERS for the CNN."""
    layers = [{"w": w, "b": b} for w, b in initial_params(model, seed)]
    return dict(zip(CNN_LAYERS, layers)) if model == "cnn" else layers


class NextBatch:
    """The tutorial's `next_batch`: shuffled epochs, a batch may span two of them.

    `permutation()` makes each epoch's order (NumPy's by default; the PyTorch contender passes
    `torch.randperm`), `concatenate` joins the two parts of a batch that spans epochs."""

    def __init__(self, num_examples: int, seed: int = 0, permutation: Callable | None = None,
                 concatenate: Callable = np.concatenate):
        if permutation is None:
            rng = np.random.default_rng(seed)
            permutation = functools.partial(rng.permutation, num_examples)
        self.num_examples, self.permutation, self.concatenate = num_examples, permutation, concatenate
        self.order, self.position = self.permutation(), 0

    def __call__(self, batch_size: int):
        parts, needed = [], batch_size
        while needed:
            if self.position == self.num_examples:
                self.order, self.position = self.permutation(), 0
            take = min(needed, self.num_examples - self.position)
            parts.append(self.order[self.position:self.position + take])
            self.position += take
            needed -= take
        return parts[0] if len(parts) == 1 else self.concatenate(parts)


def shared_order(num_examples: int, batch_size: int, num_steps: int, seed: int = 0) -> np.ndarray:
    """The batch indices every contender trains on when results must match: (num_steps, B)."""
    sampler = NextBatch(num_examples, seed)
    return np.stack([sampler(batch_size) for _ in range(num_steps)]).astype(np.int32)


def train_until(train_steps, accuracy, eval_every: int, max_steps: int, target: float) -> dict:
    """Calls train_steps(start, count) chunk by chunk until accuracy() reaches `target`."""
    for start in range(0, max_steps, eval_every):
        count = min(eval_every, max_steps - start)
        train_steps(start, count)
        reached = accuracy()
        if reached >= target:
            return {"reached": True, "steps": start + count, "test_accuracy": reached}
    return {"reached": False, "steps": max_steps, "test_accuracy": reached}


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def serve(contender) -> None:
    """The worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    out = sys.stdout
    sys.stdout = sys.stderr  # keep framework chatter off the reply channel
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op == "exit":
                reply = {"max_rss_mb": max_rss_mb()}
            else:
                reply = getattr(contender, op)(**request)
        except Exception as err:  # reported to the runner, which records it as a failure
            reply = {"error": f"{type(err).__name__}: {err}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if op == "exit":
            return


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def thread_settings() -> dict:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS",
             "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS")
    return {"cpu_count": os.cpu_count(), **{n: os.environ.get(n) for n in names if os.environ.get(n)}}
