"""What a finished run writes beside its metrics: the tutorial's figures and the versions that ran.

The figures follow the model and the data: grids at the data's image shape, a K x K confusion
matrix, weights images only for a dense first layer over picture inputs; what does not apply is left
out with a note, and a failure to draw is a note too, never a failed run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from jaxlin.data.datasets import Datasets
from jaxlin.models import Model


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("jaxlin", "jax", "jaxlib", "optax", "numpy", "matplotlib"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["jaxlin_commit"] = _git_commit()
    return versions


def _git_commit() -> str | None:
    """The commit of a jaxlin source checkout (an editable install), else None."""
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip() if done.returncode == 0 else ""
    return commit or None


def accuracy_line(accuracy: float, when: str = "") -> str:
    """The tutorial's line, e.g. "Accuracy on test-set: 91.8%"."""
    return f"Accuracy on test-set: {accuracy:.1%}" + (f" ({when})" if when else "")


# Set (to anything but empty) to let a figure's failure end the run rather than become a note: the tests
# set it, so that a bug in the figures fails them instead of hiding behind a note.
FIGURE_ERRORS_ENV = "JAXLIN_FIGURE_ERRORS_RAISE"


def is_picture(image_shape) -> bool:
    """Whether images of this (H, W, C) can be drawn: at least 2x2, gray or RGB."""
    height, width, channels = image_shape
    return height >= 2 and width >= 2 and channels in (1, 3)


def _shape_text(image_shape) -> str:
    return "x".join(str(d) for d in image_shape)


def figure_plan(data: Datasets, model: Model, params) -> tuple[bool, tuple[np.ndarray, list[str]] | None, list[str]]:
    """(draw the image grids?, the weights to draw or None, a note for each figure left out)."""
    picture = is_picture(data.image_shape)
    notes = [] if picture else [f"(No example or misclassified images: {data.name}'s inputs "
                                f"({_shape_text(data.image_shape)}) are not pictures.)"]
    weights = model.first_dense_weights(params)
    if weights is None:
        if ":" in model.name:  # a user's MODULE:NAME: jaxlin cannot tell its layers, only its params' layout
            notes.append(f"(No weights figure: {model.name}'s params are not jaxlin's dense layers "
                         f"([{{\"w\", \"b\"}}, ...]).)")
        else:
            notes.append(f"(No weights figure: the first layer of the {model.name} is not dense.)")
    elif not picture or weights[0].shape[0] != data.num_features:
        notes.append(f"(No weights figure: the inputs of the {model.name}'s first layer are not "
                     f"{_shape_text(data.image_shape)} images.)")
        weights = None
    elif not model.is_single_dense_layer:  # hidden units: the tutorial's first 12
        weights = weights[0][:, :12], weights[1][:12]
    return picture, weights, notes


def figure_inputs(data: Datasets, model: Model, params, final: dict, evaluations: list[dict],
                  curve_key: str = "test_accuracy") -> tuple[dict, list[str]]:
    """What `plots.draw_run_figures` needs, as arrays and JSON values (a figure worker gets them), and
    the notes for the figures that do not apply (their inputs are None)."""
    picture, weights, notes = figure_plan(data, model, params)
    inputs = {"images": data.test.images_uint8 if picture else None, "labels": data.test.labels,
              "predictions": final["predictions"],
              "weights": None if weights is None else np.asarray(weights[0]),
              "weight_titles": None if weights is None else list(weights[1]),
              "confusion": np.asarray(final["confusion_matrix"]), "evaluations": evaluations,
              "curve_key": curve_key, "image_shape": list(data.image_shape)}
    return inputs, notes


def write_figures(directory: Path, data: Datasets, model: Model, params, final: dict,
                  evaluations: list[dict], curve_key: str = "test_accuracy", worker=None) -> list[str]:
    """The tutorial's figures of a trained model; the learning curve plots `curve_key` of each record.
    Drawn by `worker` (a `figure_worker.FigureWorker` started at launch) when given, else here.

    Returns notes for the run's output: the figures that do not apply to this model and data, and a
    failure to draw (the figures are extras: a failure becomes a note and the run's other outputs
    are still written, unless $JAXLIN_FIGURE_ERRORS_RAISE is set)."""
    inputs, notes = figure_inputs(data, model, params, final, evaluations, curve_key)
    if worker is not None and worker.draw(directory, inputs):
        return notes
    try:
        from jaxlin.runs import plots  # matplotlib: only when figures are drawn

        plots.draw_run_figures(directory, **inputs)
    except Exception as err:  # any failure, so that no figure can fail a trained run
        _remove_figures(directory)
        notes.append(figure_failure_note("Figures", err))
    return notes


def figure_failure_note(what: str, err: Exception) -> str:
    """The note for figures that failed to draw (re-raises `err` when $JAXLIN_FIGURE_ERRORS_RAISE is set, so
    that tests see figure bugs); call it from an `except` block."""
    if os.environ.get(FIGURE_ERRORS_ENV):
        raise err
    return (f"({what} not drawn: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
            f"the other outputs are complete.)")


def _remove_figures(directory: Path) -> None:
    """The PNGs of a drawing that failed half-way: a run's figures are all there or none."""
    for path in Path(directory).glob("*.png"):
        path.unlink(missing_ok=True)
