"""Evaluation metrics, on every example."""

import jax
import numpy as np
import pytest

from jaxlin.evaluate import confusion_matrix, evaluate, per_class_accuracy, predict_probabilities
from jaxlin.models import get_model


def test_confusion_matrix_and_per_class_accuracy():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 0, 2])
    confusion = confusion_matrix(labels, predictions, num_classes=4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(per_class_accuracy(confusion), [0.5, 1.0, 2 / 3, 0.0])


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10, 64])
def test_no_example_is_dropped(batch_size):
    model = get_model("mlp", hidden_sizes=(8,))
    params = model.init(jax.random.key(0))
    images = np.random.default_rng(0).integers(0, 256, (10, 784)).astype(np.uint8)
    whole = predict_probabilities(model.apply, params, images, batch_size=10)
    batched = predict_probabilities(model.apply, params, images, batch_size=batch_size)
    assert batched.shape == (10, 10)
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, rtol=1e-5)


def test_evaluate_counts_every_test_image(tiny_data):
    model = get_model("linear")
    params = model.init(jax.random.key(0))  # zeros: every prediction is class 0
    report = evaluate(model.apply, params, tiny_data.test, batch_size=100)  # 1,003 = 10 x 100 + 3
    assert report["num_examples"] == 1003 and len(report["predictions"]) == 1003
    assert report["accuracy"] == pytest.approx(np.mean(tiny_data.test.labels == 0))
    assert np.sum(report["confusion_matrix"]) == 1003
    assert np.asarray(report["confusion_matrix"])[:, 1:].sum() == 0
