"""What a finished run writes beside its metrics: the tutorial's figures and the versions that ran."""

from __future__ import annotations

import importlib.metadata
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


def figure_inputs(data: Datasets, model: Model, params, final: dict, evaluations: list[dict],
                  curve_key: str = "test_accuracy") -> dict:
    """What `plots.draw_run_figures` needs, as arrays and JSON values (a figure worker gets them)."""
    weights = model.first_dense_weights(params)
    return {"images": data.test.images_uint8, "labels": data.test.labels, "predictions": final["predictions"],
            "weights": None if weights is None else weights[0],
            "weight_titles": None if weights is None else weights[1],
            "confusion": np.asarray(final["confusion_matrix"]), "evaluations": evaluations, "curve_key": curve_key}


def write_figures(directory: Path, data: Datasets, model: Model, params, final: dict,
                  evaluations: list[dict], curve_key: str = "test_accuracy", worker=None) -> None:
    """The tutorial's figures of a trained model; the learning curve plots `curve_key` of each record.
    Drawn by `worker` (a `figure_worker.FigureWorker` started at launch) when given, else here."""
    inputs = figure_inputs(data, model, params, final, evaluations, curve_key)
    if worker is not None and worker.draw(directory, inputs):
        return
    from jaxlin.runs import plots  # matplotlib: only when figures are drawn

    plots.draw_run_figures(directory, **inputs)
