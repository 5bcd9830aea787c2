"""`jaxlin evaluate`: report the test-set metrics of a params.npz written by `jaxlin train`."""

from __future__ import annotations

import argparse
import json

from jaxlin.cli.flags import DEFAULTS, add_config_flags
from jaxlin.runtime.signals import StopRequest


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="report test-set metrics of saved params",
                              description="Reload a params.npz written by `jaxlin train` and evaluate it.")
    p.add_argument("params", help="path to a params.npz")
    add_config_flags(p, "evaluate")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="check that the params are for this model (default: the model the file names)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace, stop: StopRequest | None) -> int:
    from jaxlin.cli.backend import jax_devices
    from jaxlin.runs.evaluation import evaluate_saved
    from jaxlin.runs.outputs import accuracy_line

    settings = {name: getattr(args, name, getattr(DEFAULTS, name))
                for name in ("dataset", "data_dir", "device", "source")}
    # --dataset left out: the data is named after what it is (a set jaxlin knows by its files' content,
    # else the directory's name; `datasets.identify`), not "mnist" whatever it holds.
    settings["dataset"] = getattr(args, "dataset", None)
    jax_devices()
    metrics = evaluate_saved(args.params, settings["dataset"], settings["data_dir"], args.model,
                             settings["device"], settings["source"])
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"Params: {metrics['params']} ({metrics['model']})")
    shape = "x".join(str(d) for d in metrics["image_shape"])
    print(f"Data: {metrics['dataset']} test split: {shape} images, {metrics['num_classes']} classes")
    print(accuracy_line(metrics["test_accuracy"]) + f" of {metrics['num_examples']} images")
    per_class = "  ".join(f"{d}: {a:.1%}" for d, a in enumerate(metrics["per_class_accuracy"]))
    print(f"Per class: {per_class}")
    return 0
