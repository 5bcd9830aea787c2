"""The tutorial's figures as PNG files, drawn headless with matplotlib's Figure API.

Images are drawn at the data's own shape (H, W, C): gray (C = 1) with the tutorial's binary colour
map, colour (C = 3) as RGB. What a run cannot draw (images of data that are not pictures, weights of
a first layer that is not dense) arrives as None and is skipped; `outputs` says why in a note.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jaxlin.data.files import atomic_write  # not params_file's import of JAX: the worker draws without it

MNIST_SHAPE = (28, 28, 1)
MAX_WEIGHT_IMAGES = 64  # one per class up to 64 classes; more would be too small to see
MAX_LABELLED_CLASSES = 50  # beyond this, the confusion matrix's cells carry no numbers


def _save(fig: Figure, path: str | os.PathLike) -> Figure:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=80, bbox_inches="tight"))
    return fig


def draw_run_figures(directory: str | os.PathLike, images: np.ndarray | None, labels: np.ndarray,
                     predictions: np.ndarray, weights: np.ndarray | None, weight_titles: Sequence[str] | None,
                     confusion: np.ndarray, evaluations: Sequence[dict], curve_key: str = "test_accuracy",
                     image_shape: Sequence[int] = MNIST_SHAPE, only: Collection[str] | None = None) -> list[str]:
    """The tutorial's figures of a trained model, into `directory`: no image grids when `images` is
    None, no weights figure when `weights` is None; given `only` (file names), only those of them.
    Returns the names of the files written."""
    directory = Path(directory)
    shape = tuple(int(d) for d in image_shape)
    figures = {
        "example_images.png": None if images is None else lambda path: plot_images(
            images[:9], labels[:9], predictions[:9], path, title="First test images", image_shape=shape),
        "misclassified.png": None if images is None else lambda path: plot_misclassified(
            images, labels, predictions, path, image_shape=shape),
        "weights.png": None if weights is None else lambda path: plot_weights(
            weights, path, weight_titles, image_shape=shape),
        "confusion_matrix.png": lambda path: plot_confusion_matrix(np.asarray(confusion), path),
        "learning_curve.png": lambda path: plot_learning_curve(evaluations, path, curve_key),
    }
    written = []
    for name, draw in figures.items():
        if draw is not None and (only is None or name in only):
            draw(directory / name)
            written.append(name)
    return written


def _show_image(ax, flat: np.ndarray, shape: tuple[int, int, int]) -> None:
    """One image of flat uint8 values, gray or RGB by its channel count."""
    image = np.asarray(flat).reshape(shape)
    if shape[2] == 1:
        ax.imshow(image[..., 0], cmap="binary")
    else:
        ax.imshow(image)


def plot_images(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray | None,
                path: str | os.PathLike, title: str = "", image_shape: Sequence[int] = MNIST_SHAPE) -> Figure:
    """Up to 9 images (flat, of `image_shape`) in a 3x3 grid, each captioned with its true (and predicted) class."""
    shape = tuple(int(d) for d in image_shape)
    fig = Figure(figsize=(5, 5.4))
    axes = fig.subplots(3, 3)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(images):
            ax.axis("off")
            continue
        _show_image(ax, images[i], shape)
        caption = f"True: {labels[i]}" + ("" if predictions is None else f", Pred: {predictions[i]}")
        ax.set_xlabel(caption)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_misclassified(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                       path: str | os.PathLike, image_shape: Sequence[int] = MNIST_SHAPE) -> int:
    """The first 9 misclassified images; returns how many were misclassified in all."""
    wrong = np.flatnonzero(predictions != labels)
    first = wrong[:9]
    plot_images(images[first], labels[first], predictions[first], path,
                title=f"Misclassified: {len(wrong)} of {len(labels)}", image_shape=image_shape)
    return len(wrong)


def _grid(count: int) -> tuple[int, int]:
    """Rows and columns for `count` panels: rows of 4 up to 12 (the tutorial's 3x4), else about square."""
    if count <= 12:
        return max(1, math.ceil(count / 4)), 4
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def plot_weights(weights: np.ndarray, path: str | os.PathLike, titles: Sequence[str],
                 image_shape: Sequence[int] = MNIST_SHAPE) -> Figure:
    """Columns of a (H*W*C, n) weight matrix as images (up to 64), one shared symmetric colour scale:
    gray inputs in the seismic map (white is zero), RGB inputs as colours around mid-gray."""
    shape = tuple(int(d) for d in image_shape)
    count = min(weights.shape[1], MAX_WEIGHT_IMAGES)
    limit = float(np.abs(weights[:, :count]).max()) or 1.0  # symmetric, so white (gray for RGB) means zero
    rows, columns = _grid(count)
    fig = Figure(figsize=(7 * columns / 4, 5.6 * rows / 3))
    axes = fig.subplots(rows, columns, squeeze=False)
    image = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.axis("off")
            continue
        column = weights[:, i].reshape(shape)
        if shape[2] == 1:
            image = ax.imshow(column[..., 0], vmin=-limit, vmax=limit, cmap="seismic")
        else:
            ax.imshow(np.clip(0.5 + column / (2 * limit), 0, 1))
        ax.set_xlabel(titles[i])
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    else:  # RGB: no colour bar can say what a colour means
        fig.suptitle(f"Weights per colour channel: mid-gray is 0, full colour ±{limit:.3g}")
    return _save(fig, path)


def plot_confusion_matrix(confusion: np.ndarray, path: str | os.PathLike) -> Figure:
    """counts[true, predicted] of K classes: the figure grows with K; cells carry their counts up to
    50 classes, and the tick labels thin out beyond that."""
    num_classes = len(confusion)
    side = max(6.0, 2 + 0.32 * min(num_classes, 80))
    fig = Figure(figsize=(side, side * 0.9))
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)  # as tall as the matrix, however large
    threshold = confusion.max() / 2
    if num_classes <= MAX_LABELLED_CLASSES:
        fontsize = 7 if num_classes <= 20 else 6 if num_classes <= 35 else 5
        for (true, pred), count in np.ndenumerate(confusion):
            ax.text(pred, true, str(count), ha="center", va="center", fontsize=fontsize,
                    color="white" if count > threshold else "black")
    ticks = np.arange(0, num_classes, max(1, math.ceil(num_classes / MAX_LABELLED_CLASSES)))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    if num_classes > 20:
        ax.tick_params(labelsize=7)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title("Confusion matrix (test set)")
    return _save(fig, path)


def plot_learning_curve(evaluations: Sequence[dict], path: str | os.PathLike, key: str = "test_accuracy") -> Figure:
    """Accuracy (`key` of each record: test, or validation for a sweep's best member) against step."""
    steps = [e["step"] for e in evaluations]
    accuracies = [100 * e[key] for e in evaluations]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(steps, accuracies, marker="o", markersize=3)
    ax.set_xlabel("Training step")
    ax.set_ylabel(f"{key.split('_')[0].capitalize()} accuracy (%)")
    ax.set_title(f"Learning curve (final {accuracies[-1]:.1f}%)" if accuracies else "Learning curve")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# What a sweep's member record holds besides its settings.
_SWEEP_OUTCOMES = frozenset({"index", "diverged_at_step", "validation_accuracy", "test_accuracy",
                             "validation_curve", "final_train_loss"})


# Evaluations after the first that make a curve worth zooming into: with fewer, the panel shows whole lines.
_ZOOM_POINTS = 3


def _curve_limits(curves: np.ndarray) -> tuple[float, float]:
    """The y-limits (%) of the learning curves: zoomed onto where the curves go after their first point
    (not the ~10% they start from) when each has `_ZOOM_POINTS` more; else every point, the start too, so
    that two or three evaluations draw whole lines rather than an almost empty panel."""
    finite = curves[np.isfinite(curves)]
    if not finite.size:
        return 0.0, 100.0
    trained = curves[:, 1:]
    if trained.shape[1] >= _ZOOM_POINTS and np.isfinite(trained).any():
        low = np.nanpercentile(trained, 5)
    else:
        low = finite.min()
    low, high = 100 * float(low), 100 * float(np.nanmax(curves))
    margin = max(1.0, 0.05 * (high - low))
    return max(0.0, low - margin), min(100.0, high) + 1.0


def plot_sweep(members: Sequence[dict], steps: Sequence[int], curves: np.ndarray, best: int | None,
               path: str | os.PathLike) -> Figure:
    """Left: final validation accuracy against learning rate, a line per combination of the other settings,
    diverged members marked with an x at the bottom. Right: every member's validation curve, the best in bold.

    members: dicts with learning_rate, the other settings that tell members apart (seed, data_seed,
    momentum, weight_decay...), diverged_at_step (or None), validation_accuracy; curves:
    (num_members, len(steps)) validation accuracies (NaN where unknown).
    """
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    # A line per combination of every setting but the learning rate (seed, data seed, momentum, weight
    # decay, clip norm...); the legend names only the settings that vary.
    settings = sorted({name for m in members for name in m if name not in _SWEEP_OUTCOMES and name != "learning_rate"})
    varying = [name for name in settings if len({repr(m.get(name)) for m in members}) > 1]
    groups: dict[tuple, list[int]] = {}
    for i, member in enumerate(members):
        groups.setdefault(tuple(member.get(name) for name in varying), []).append(i)
    floor = min([100 * m["validation_accuracy"] for m in members
                 if m["validation_accuracy"] is not None and m["diverged_at_step"] is None] or [0])
    for number, (values, indices) in enumerate(groups.items()):
        indices = sorted(indices, key=lambda i: members[i]["learning_rate"])
        label = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in zip(varying, values)) or "all members"
        ok = [i for i in indices if members[i]["diverged_at_step"] is None]
        (line,) = left.plot([members[i]["learning_rate"] for i in ok],
                            [100 * members[i]["validation_accuracy"] for i in ok], marker="o", label=label)
        bad = [i for i in indices if members[i]["diverged_at_step"] is not None]
        if bad:
            left.scatter([members[i]["learning_rate"] for i in bad], [floor] * len(bad), marker="x", s=60,
                         color=line.get_color(), label="diverged" if number == 0 else None)
    if best is not None:
        left.scatter([members[best]["learning_rate"]], [100 * members[best]["validation_accuracy"]], s=160,
                     facecolors="none", edgecolors="black", label="best (validation)")
    left.set_xscale("log")
    left.set_xlabel("Learning rate")
    left.set_ylabel("Final validation accuracy (%)")
    left.set_title("Validation accuracy by learning rate")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    for i, curve in enumerate(np.asarray(curves, float)):
        right.plot(steps, 100 * curve, linewidth=2.2 if i == best else 0.8, alpha=1 if i == best else 0.5,
                   color="black" if i == best else None, marker="o" if len(steps) <= 2 * _ZOOM_POINTS else None,
                   markersize=3)
    right.set_ylim(*_curve_limits(np.asarray(curves, float)))
    right.set_xlabel("Training step")
    right.set_ylabel("Validation accuracy (%)")
    right.set_title("Learning curves (best in black)")
    right.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
