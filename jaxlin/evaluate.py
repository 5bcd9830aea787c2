"""Evaluation: predictions, probabilities, accuracy, per-class accuracy, confusion matrix.

Every example is evaluated: the last batch is padded to the batch shape (one
compile) and the padding is cut off again, never dropped.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin.data import NUM_CLASSES, Split

EVAL_BATCH_SIZE = 10_000


def to_float_images(images_uint8: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1]; division matches `Split.images` bit for bit."""
    return images_uint8.astype(jnp.float32) / 255.0


def _batched(fn: Callable, images: np.ndarray | jax.Array, batch_size: int) -> np.ndarray:
    """Applies `fn` to fixed-size batches of `images`, padding the last one."""
    num = len(images)
    batch_size = min(batch_size, max(num, 1))
    outputs = []
    for start in range(0, num, batch_size):
        batch = images[start:start + batch_size]
        pad = batch_size - len(batch)
        if pad:
            batch = jnp.concatenate([jnp.asarray(batch), jnp.zeros((pad, *batch.shape[1:]), batch.dtype)])
        outputs.append(np.asarray(fn(batch))[:batch_size - pad])
    return np.concatenate(outputs) if outputs else np.zeros((0, NUM_CLASSES), np.float32)


def make_probability_fn(apply_fn: Callable) -> Callable:
    """jitted (params, uint8 images) -> softmax probabilities."""
    return jax.jit(lambda params, images_uint8: jax.nn.softmax(apply_fn(params, to_float_images(images_uint8))))


def make_accuracy_fn(apply_fn: Callable, images_uint8: jax.Array, labels: jax.Array) -> Callable:
    """params -> accuracy (a float) on a device-resident split, in one compiled call."""

    @jax.jit
    def num_correct(params):
        logits = apply_fn(params, to_float_images(images_uint8))
        return jnp.sum(jnp.argmax(logits, axis=-1) == labels)

    return lambda params: int(num_correct(params)) / len(labels)


def predict_probabilities(apply_fn: Callable, params, images_uint8, batch_size: int = EVAL_BATCH_SIZE,
                          probability_fn: Callable | None = None) -> np.ndarray:
    probability_fn = probability_fn or make_probability_fn(apply_fn)
    return _batched(lambda batch: probability_fn(params, batch), images_uint8, batch_size)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """counts[true, predicted]."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=1)
    return np.divide(np.diag(confusion), totals, out=np.zeros(len(totals)), where=totals > 0)


def evaluate(apply_fn: Callable, params, split: Split, batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Accuracy and its break-down on every example of `split`."""
    probabilities = predict_probabilities(apply_fn, params, split.images_uint8, batch_size)
    predictions = probabilities.argmax(axis=1)
    confusion = confusion_matrix(split.labels, predictions)
    return {
        "accuracy": float(np.mean(predictions == split.labels)) if len(split) else float("nan"),
        "num_examples": len(split),
        "per_class_accuracy": per_class_accuracy(confusion).tolist(),
        "confusion_matrix": confusion.tolist(),
        "predictions": predictions,
        "probabilities": probabilities,
    }
