"""The floor: one step's arithmetic as bare NumPy/BLAS (gather the batch, forward matmul,
softmax, gradient matmul, update), with no framework at all."""

from __future__ import annotations

import platform
import time

import numpy as np

from bench.common import NextBatch, initial_params, learning_rate, thread_settings, timed


def _blas_info() -> list:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for lib in threadpool_info()]


def sgd_step(params, images, labels, lr):
    """Forward, softmax cross-entropy gradient, backward and update, in place."""
    activations = [images]
    for i, (w, b) in enumerate(params):
        z = activations[-1] @ w + b
        activations.append(np.maximum(z, 0) if i < len(params) - 1 else z)
    logits = activations[-1]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    grad = probs
    grad[np.arange(len(labels)), labels] -= 1.0
    grad /= len(labels)
    for i in range(len(params) - 1, -1, -1):
        w, b = params[i]
        grad_below = grad @ w.T if i else None
        w -= lr * (activations[i].T @ grad)
        b -= lr * grad.sum(axis=0)
        if i:
            grad = grad_below * (activations[i] > 0)


class NumpyFloor:
    framework = "numpy"

    def __init__(self, data: dict):
        self.data = data

    def info(self) -> dict:
        return {"framework": "numpy", "version": np.__version__, "device": "cpu", "platform": platform.platform(),
                "threads": thread_settings(), "blas": _blas_info()}

    def peak(self, size: int = 2048, repeats: int = 5) -> dict:
        """The machine's large-matmul rate through NumPy/BLAS: the best of `repeats` float32 products."""
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
        a @ b
        best = min(timed(lambda: a @ b)[0] for _ in range(repeats))
        return {"gflops": 2 * size**3 / best / 1e9, "size": size, "seconds": best}

    def setup(self, model: str, batch_size: int, num_steps: int) -> dict:
        self.model, self.batch_size, self.num_steps = model, batch_size, num_steps
        warm_up, _ = timed(self.run)
        return {"compile_seconds": 0.0, "warm_up_seconds": warm_up}

    def run(self) -> dict:
        params = [(w.copy(), b.copy()) for w, b in initial_params(self.model)]
        lr, next_batch = learning_rate(self.model), NextBatch(len(self.data["train_labels"]))
        images_uint8, labels = self.data["train_uint8"], self.data["train_labels"]
        start = time.perf_counter()
        for _ in range(self.num_steps):
            indices = next_batch(self.batch_size)
            sgd_step(params, images_uint8[indices].astype(np.float32) / 255.0, labels[indices], lr)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "loss": float("nan")}
