"""The jobs behind the command line: train-and-evaluate with outputs, and evaluate saved params."""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxlin import checkpoint, plots
from jaxlin.config import Config, ConfigError
from jaxlin.data import DATA_DIR_ENV, Datasets, load_datasets, resolve_data_dir
from jaxlin.evaluate import evaluate
from jaxlin.models import Model, get_model
from jaxlin.train import FitResult, fit, resolve_device

PARAMS_FILE = "params.npz"
METRICS_FILE = "metrics.json"


def library_versions() -> dict:
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "optax", "numpy", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def accuracy_line(accuracy: float, when: str = "") -> str:
    """The tutorial's line, e.g. "Accuracy on test-set: 91.8%"."""
    return f"Accuracy on test-set: {accuracy:.1%}" + (f" ({when})" if when else "")


def build_model(config: Config) -> Model:
    return get_model(config.model, config.hidden_sizes, config.activation)


def check_output_dir(path: str) -> Path:
    """Fails before training, not after, when the output directory cannot be made."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output dir {out} exists and is not a directory")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not _writable(parent):
        raise ConfigError(f"output dir {out}: cannot write under {parent}")
    return out


def _writable(directory: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def describe_run(config: Config, data: Datasets, model: Model) -> str:
    opt = f"{config.optimizer}(learning_rate={config.learning_rate})"
    return (
        f"Data: {data.name} from {data.source}: train {len(data.train)}, "
        f"validation {len(data.validation)}, test {len(data.test)}\n"
        f"Model: {model.describe()}; optimizer {opt}; batch {config.batch_size}; "
        f"{config.num_steps} steps; {config.loop} loop; seed {config.seed}; "
        f"device {resolve_device(config.device)}"
    )


def write_outputs(out: Path, data: Datasets, model: Model, result: FitResult, test: dict,
                  metrics: dict) -> list[str]:
    """Writes everything into a staging directory beside `out`, then moves it in; a failure
    on the way leaves no output behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        _write_figures(staging, data, model, result, test)
        checkpoint.save_params(staging / PARAMS_FILE, result.params, model)
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        names = sorted(p.name for p in staging.iterdir())
        out.mkdir(exist_ok=True)
        for name in names:
            (staging / name).replace(out / name)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_figures(directory: Path, data: Datasets, model: Model, result: FitResult, test: dict) -> None:
    images, labels, predictions = data.test.images_uint8, data.test.labels, test["predictions"]
    plots.plot_images(images[:9], labels[:9], predictions[:9], directory / "example_images.png",
                      title="First test images")
    plots.plot_misclassified(images, labels, predictions, directory / "misclassified.png")
    first_weights = result.params[0]["w"]
    titles = ([f"Weights: {d}" for d in range(first_weights.shape[1])] if model.name == "linear"
              else [f"Hidden unit {i}" for i in range(first_weights.shape[1])])
    plots.plot_weights(first_weights, directory / "weights.png", titles)
    plots.plot_confusion_matrix(np.asarray(test["confusion_matrix"]), directory / "confusion_matrix.png")
    plots.plot_learning_curve(result.evaluations, directory / "learning_curve.png")


def train_and_evaluate(config: Config, progress: bool = True, dry_run: bool = False, log=print,
                       eval_steps: list[int] | None = None, data: Datasets | None = None) -> dict | None:
    """The `jaxlin train` job; returns the metrics written (None for a dry run).

    Test accuracy is measured at `eval_steps` (default: every `config.eval_every` steps);
    `data` skips loading when the caller already has it.
    """
    started = time.perf_counter()
    model = build_model(config)
    out = check_output_dir(config.output_dir)
    if data is None and resolve_data_dir(config.data_dir) is None:
        log(f"No --data-dir and no {DATA_DIR_ENV}: loading {config.dataset} through "
            f"tensorflow-datasets (it downloads on first use; offline, use --data-dir).")
    data = data or load_datasets(config.dataset, config.data_dir)
    config.validate(len(data.train))
    data_seconds = time.perf_counter() - started
    log(describe_run(config, data, model))
    if dry_run:
        log(f"Dry run: settings and data are valid; nothing trained, nothing written to {out}.")
        return None
    result = fit(config, data, model, eval_steps=eval_steps, progress=progress)
    log(accuracy_line(result.evaluations[0]["test_accuracy"], "before training"))
    final = result.evaluations[-1]
    log(accuracy_line(final["test_accuracy"], f"after {final['step']} steps"))
    test = evaluate(model.apply, result.params, data.test)
    metrics = {
        "final_test_accuracy": final["test_accuracy"],
        "final_test_per_class_accuracy": test["per_class_accuracy"],
        "final_test_confusion_matrix": test["confusion_matrix"],
        "evaluations": result.evaluations,
        "timings": {"data_load_seconds": data_seconds, **result.timings,
                    "total_seconds": time.perf_counter() - started},
        "device": result.device,
        "versions": library_versions(),
        "model": model.describe(),
        "config": config.to_dict(),
    }
    names = write_outputs(out, data, model, result, test, metrics)
    log(f"Wrote {', '.join(names)} to {out}")
    return metrics


def evaluate_saved(params_path: str, dataset: str = "mnist", data_dir: str | None = None,
                   model_name: str | None = None, device: str = "auto") -> dict:
    """The `jaxlin evaluate` job: test-set metrics of a saved params file."""
    params, model = checkpoint.load_params(params_path)
    if model_name is not None and model.name != model_name:
        raise checkpoint.CheckpointError(
            f"{params_path}: params are for model {model.describe()}, not {model_name}")
    data = load_datasets(dataset, data_dir)
    with jax.default_device(resolve_device(device)):
        test = evaluate(model.apply, params, data.test)
    return {
        "params": str(params_path),
        "model": model.describe(),
        "test_accuracy": test["accuracy"],
        "num_examples": test["num_examples"],
        "per_class_accuracy": test["per_class_accuracy"],
        "confusion_matrix": test["confusion_matrix"],
    }
