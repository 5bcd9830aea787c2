"""The tutorial's figures as PNG files, drawn headless with matplotlib's Figure API."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from jaxlin.checkpoint import atomic_write
from jaxlin.data import IMAGE_SHAPE


def _save(fig: Figure, path: str | os.PathLike) -> Figure:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=80, bbox_inches="tight"))
    return fig


def plot_images(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray | None,
                path: str | os.PathLike, title: str = "") -> Figure:
    """Up to 9 images in a 3x3 grid, each captioned with its true (and predicted) class."""
    fig = Figure(figsize=(5, 5.4))
    axes = fig.subplots(3, 3)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(images):
            ax.axis("off")
            continue
        ax.imshow(images[i].reshape(IMAGE_SHAPE), cmap="binary")
        caption = f"True: {labels[i]}" + ("" if predictions is None else f", Pred: {predictions[i]}")
        ax.set_xlabel(caption)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_misclassified(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                       path: str | os.PathLike) -> int:
    """The first 9 misclassified images; returns how many were misclassified in all."""
    wrong = np.flatnonzero(predictions != labels)
    first = wrong[:9]
    plot_images(images[first], labels[first], predictions[first], path,
                title=f"Misclassified: {len(wrong)} of {len(labels)}")
    return len(wrong)


def plot_weights(weights: np.ndarray, path: str | os.PathLike, titles: Sequence[str]) -> Figure:
    """Columns of a (784, n) weight matrix as images in a 3x4 grid, one shared colour scale."""
    count = min(weights.shape[1], 12)
    limit = float(np.abs(weights[:, :count]).max()) or 1.0  # symmetric, so white means zero
    fig = Figure(figsize=(7, 5.6))
    axes = fig.subplots(3, 4)
    image = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.axis("off")
            continue
        image = ax.imshow(weights[:, i].reshape(IMAGE_SHAPE), vmin=-limit, vmax=limit, cmap="seismic")
        ax.set_xlabel(titles[i])
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    return _save(fig, path)


def plot_confusion_matrix(confusion: np.ndarray, path: str | os.PathLike) -> Figure:
    num_classes = len(confusion)
    fig = Figure(figsize=(6, 5.4))
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax)
    threshold = confusion.max() / 2
    for (true, pred), count in np.ndenumerate(confusion):
        ax.text(pred, true, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > threshold else "black")
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title("Confusion matrix (test set)")
    return _save(fig, path)


def plot_learning_curve(evaluations: Sequence[dict], path: str | os.PathLike) -> Figure:
    steps = [e["step"] for e in evaluations]
    accuracies = [100 * e["test_accuracy"] for e in evaluations]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(steps, accuracies, marker="o", markersize=3)
    ax.set_xlabel("Training step")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(f"Learning curve (final {accuracies[-1]:.1f}%)" if accuracies else "Learning curve")
    ax.grid(alpha=0.3)
    return _save(fig, path)
