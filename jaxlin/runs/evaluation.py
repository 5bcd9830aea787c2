"""The `jaxlin evaluate` job: test-set metrics of a saved params file."""

from __future__ import annotations

import sys

from jaxlin.data.datasets import Datasets, load_datasets
from jaxlin.models import Model
from jaxlin.runs import params_file
from jaxlin.runtime.devices import resolve_placement
from jaxlin.training.evaluate import evaluate


def evaluate_saved(params_path: str, dataset: str = "mnist", data_dir: str | None = None,
                   model_name: str | None = None, device: str = "auto", source: str = "auto") -> dict:
    """The `jaxlin evaluate` job: test-set metrics of a saved params file on the data set's test split.
    The file is read (and refused) before any data is loaded; its model must fit the data's image
    shape and class count."""
    params, model = params_file.load_params(params_path)  # for the data it was trained on
    if model_name is not None and model.name != model_name:
        raise params_file.CheckpointError(
            f"{params_path}: params are for model {model.describe()}, not {model_name}")
    # Only the test split is used: no validation is held out, so any size of training set loads.
    data = load_datasets(dataset, data_dir, source, log=lambda line: print(line, file=sys.stderr), validation_size=0,
                         check_name=True)
    check_fits(params_path, model, params_file.stored_image_shape(params_path), data)
    test = evaluate(model.apply, params, data.test, batch_size=model.eval_batch_size,
                    placement=resolve_placement(device), num_classes=data.num_classes)
    return {
        "params": str(params_path),
        "model": model.describe(),
        "dataset": data.name,
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "test_accuracy": test["accuracy"],
        "num_examples": test["num_examples"],
        "per_class_accuracy": test["per_class_accuracy"],
        "confusion_matrix": test["confusion_matrix"],
    }


def check_fits(params_path, model: Model, image_shape: tuple[int, int, int] | None, data: Datasets) -> None:
    """Refuses, in one line, params trained on images of another shape or another class count."""
    inputs, classes = model.layer_sizes[0], model.layer_sizes[-1]
    shape = "x".join(str(d) for d in data.image_shape)
    if (image_shape is not None and tuple(image_shape) != data.image_shape) or inputs != data.num_features:
        trained = "x".join(str(d) for d in image_shape) + " images" if image_shape else f"images of {inputs} values"
        raise params_file.CheckpointError(f"{params_path}: the params were trained on {trained}; {data.name}'s are "
                                          f"{shape} ({data.num_features} values){_OTHER_DATA}")
    if classes != data.num_classes:
        raise params_file.CheckpointError(f"{params_path}: the params predict {classes} classes; {data.name} has "
                                          f"{data.num_classes}{_OTHER_DATA}")


_OTHER_DATA = "; pass --data-dir with the data they were trained on"
