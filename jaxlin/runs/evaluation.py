"""The `jaxlin evaluate` job: test-set metrics of a saved params file."""

from __future__ import annotations

import sys

from jaxlin.data.datasets import load_datasets
from jaxlin.runs import params_file
from jaxlin.runtime.devices import resolve_placement
from jaxlin.training.evaluate import evaluate


def evaluate_saved(params_path: str, dataset: str = "mnist", data_dir: str | None = None,
                   model_name: str | None = None, device: str = "auto", source: str = "auto") -> dict:
    """The `jaxlin evaluate` job: test-set metrics of a saved params file."""
    params, model = params_file.load_params(params_path)
    if model_name is not None and model.name != model_name:
        raise params_file.CheckpointError(
            f"{params_path}: params are for model {model.describe()}, not {model_name}")
    data = load_datasets(dataset, data_dir, source, log=lambda line: print(line, file=sys.stderr))
    test = evaluate(model.apply, params, data.test, batch_size=model.eval_batch_size,
                    placement=resolve_placement(device))
    return {
        "params": str(params_path),
        "model": model.describe(),
        "test_accuracy": test["accuracy"],
        "num_examples": test["num_examples"],
        "per_class_accuracy": test["per_class_accuracy"],
        "confusion_matrix": test["confusion_matrix"],
    }
