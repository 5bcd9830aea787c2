"""Evaluation: one path from params to predictions, accuracy, per-class accuracy and confusion matrix.

`Evaluator` holds a split on the device, padded to whole batches, and predicts
every example in one compiled call (one batch after another, so memory is bounded
by one batch); the padding is cut off on the host, never counted.
Everything else is counted from those predictions, so the accuracy in the
progress bar, in `metrics.jsonl` and in the confusion matrix cannot disagree. The confusion
matrix has a row and a column per class of the data (10 for MNIST, K for another set).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin.data.datasets import Split

EVAL_BATCH_SIZE = 10_000


def to_float_images(images_uint8: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1]; division matches `Split.images` bit for bit."""
    return images_uint8.astype(jnp.float32) / 255.0


# Up to this many batches are unrolled rather than looped with `lax.map`: XLA's CPU backend runs
# convolutions inside a loop several times slower (measured: bench/NOTES.md).
MAX_UNROLLED_BATCHES = 16


def make_predict_fn(apply_fn: Callable) -> Callable:
    """jitted (params, uint8 batches (num_batches, batch, features)) -> class ids (num_batches * batch,)."""

    def classify(params, batch):
        return jnp.argmax(apply_fn(params, to_float_images(batch)), axis=-1)

    def predict(params, batches):
        if batches.shape[0] <= MAX_UNROLLED_BATCHES:
            return jnp.concatenate([classify(params, batch) for batch in batches])
        return jax.lax.map(lambda batch: classify(params, batch), batches).reshape(-1)

    compiled = {}  # by the compile options its first call chose (see `cpu_convolutions.evaluation_options`)

    def run(params, batches):
        if not compiled:
            from jaxlin.runtime import cpu_convolutions

            options = cpu_convolutions.evaluation_options(predict, params, batches)
            compiled["predict"] = jax.jit(predict, compiler_options=options or None)
        return compiled["predict"](params, batches)

    return run


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """counts[true, predicted], (num_classes, num_classes); `num_classes` defaults to 1 + the largest
    label or prediction (at least MNIST's 10)."""
    if num_classes is None:
        num_classes = max(10, int(np.max(labels, initial=-1)) + 1, int(np.max(predictions, initial=-1)) + 1)
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=1)
    return np.divide(np.diag(confusion), totals, out=np.zeros(len(totals)), where=totals > 0)


class Evaluator:
    """Test metrics of params on one split, computed on `device` (default: JAX's default device)."""

    def __init__(self, apply_fn: Callable, images_uint8, labels, batch_size: int = EVAL_BATCH_SIZE,
                 placement=None, predict_fn: Callable | None = None, num_classes: int | None = None):
        """`placement` (see `parallel`): where to evaluate; over several devices each batch is
        sharded along its examples. `num_classes`: the confusion matrix's size (default: the width of
        the model's logits, which is the data's class count)."""
        from jaxlin.runtime.devices import resolve_placement

        placement = placement or resolve_placement()
        self.num_examples = len(labels)
        self.labels = np.asarray(labels)
        batch_size = max(1, min(batch_size, self.num_examples))
        # Whole batches per device: round the batch up to a multiple of the device count.
        batch_size = -(-batch_size // placement.num_devices) * placement.num_devices
        num_batches = -(-self.num_examples // batch_size)
        images = np.asarray(images_uint8)
        padded = np.zeros((num_batches * batch_size, *images.shape[1:]), images.dtype)
        padded[:self.num_examples] = images
        batches = padded.reshape(num_batches, batch_size, *images.shape[1:])
        self._batches = placement.put(batches, placement.batch_sharding(axis=1))
        self._predict = predict_fn or make_predict_fn(apply_fn)
        self._apply, self.num_classes = apply_fn, num_classes

    @property
    def batches(self) -> jax.Array:
        """The split's uint8 images as placed for prediction, (num_batches, batch_size, features):
        the examples in order, then zero padding up to whole batches (never counted here)."""
        return self._batches

    def predictions(self, params) -> np.ndarray:
        return self.read(self.dispatch(params))

    def dispatch(self, params):
        """Starts predicting every example (JAX dispatches it and returns at once); `read` waits for it."""
        return None if self.num_examples == 0 else self._predict(params, self._batches)

    def read(self, dispatched) -> np.ndarray:
        """The predictions `dispatch` started, on the host, without the padding."""
        if dispatched is None:
            return np.zeros(0, np.int64)
        from jaxlin.runtime.devices import to_host

        return to_host(dispatched)[:self.num_examples]

    def accuracy_of(self, dispatched) -> float | None:
        """The accuracy of the predictions `dispatch` started (the same count as the confusion matrix's
        diagonal); None for an empty split."""
        predictions = self.read(dispatched)
        return int(np.count_nonzero(predictions == self.labels)) / self.num_examples if self.num_examples else None

    def __call__(self, params) -> dict:
        """accuracy (None for an empty split), num_examples, per_class_accuracy, confusion_matrix, predictions."""
        predictions = self.predictions(params)
        confusion = confusion_matrix(self.labels, predictions, self.classes(params))
        correct = int(np.trace(confusion))
        return {
            "accuracy": correct / self.num_examples if self.num_examples else None,
            "num_examples": self.num_examples,
            "per_class_accuracy": per_class_accuracy(confusion).tolist(),
            "confusion_matrix": confusion.tolist(),
            "predictions": predictions,
        }

    def classes(self, params) -> int:
        """The class count: as given, else the model's logits width (found once, from shapes alone)."""
        if self.num_classes is None:
            features = self._batches.shape[-1]
            logits = jax.eval_shape(self._apply, params, jax.ShapeDtypeStruct((1, features), jnp.float32))
            self.num_classes = int(logits.shape[-1])
        return self.num_classes

    def accuracy(self, params) -> float | None:
        return self(params)["accuracy"]


def evaluate(apply_fn: Callable, params, split: Split, batch_size: int = EVAL_BATCH_SIZE, placement=None,
             num_classes: int | None = None) -> dict:
    """Accuracy and its break-down (per class of `num_classes`, default the model's) on every example of `split`."""
    return Evaluator(apply_fn, split.images_uint8, split.labels, batch_size, placement,
                     num_classes=num_classes)(params)
