"""The `jaxlin` command line: a thin layer that turns flags into a Config and runs a job."""

from __future__ import annotations

import argparse
import json
import sys

from jaxlin.config import DEVICES, LOOPS, OPTIMIZERS, Config, ConfigError
from jaxlin.data import DATA_DIR_ENV, DATASETS
from jaxlin.models import ACTIVATIONS, MODELS

DEFAULTS = Config()


def _hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be integers >= 1, got {text!r}")
    return sizes


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default=DEFAULTS.dataset,
                        help="data set (default: %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help=f"directory with the four IDX files (.gz or not); default: ${DATA_DIR_ENV}, "
                             "else tensorflow-datasets")
    parser.add_argument("--device", choices=DEVICES, default=DEFAULTS.device,
                        help="where to compute (default: %(default)s, JAX's first device)")


def _train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model and write metrics, figures and params",
                              description="Train on MNIST; defaults reproduce the TensorFlow tutorial.")
    _data_args(p)
    p.add_argument("--model", choices=MODELS, default=DEFAULTS.model, help="default: %(default)s")
    p.add_argument("--hidden-sizes", type=_hidden_sizes, default=DEFAULTS.hidden_sizes, metavar="N[,N...]",
                   help="MLP hidden layer sizes (default: 256)")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default=DEFAULTS.activation,
                   help="MLP activation (default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer, help="default: %(default)s")
    p.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="default: %(default)s")
    p.add_argument("--num-steps", "--steps", type=int, default=DEFAULTS.num_steps, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="default: %(default)s")
    p.add_argument("--eval-every", type=int, default=DEFAULTS.eval_every,
                   help="evaluate test accuracy every N steps (default: %(default)s)")
    p.add_argument("--loop", choices=LOOPS, default=DEFAULTS.loop,
                   help="fused: many steps per compiled call on device-resident data; "
                        "per-step: one call per host-fed batch (default: %(default)s)")
    p.add_argument("--steps-per-call", type=int, default=DEFAULTS.steps_per_call,
                   help="most steps in one compiled call of the fused loop (default: %(default)s)")
    p.add_argument("--output-dir", default=DEFAULTS.output_dir, help="default: %(default)s")
    p.add_argument("--dry-run", action="store_true",
                   help="check settings and data, print the plan, train and write nothing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="report test-set metrics of saved params",
                              description="Reload a params.npz written by `jaxlin train` and evaluate it.")
    p.add_argument("params", help="path to a params.npz")
    _data_args(p)
    p.add_argument("--model", choices=MODELS, default=None,
                   help="check that the params are for this model (default: the model the file names)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxlin", description="The TensorFlow MNIST linear-model tutorial in JAX: train, evaluate.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate}")
    _train_parser(subparsers)
    _evaluate_parser(subparsers)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    names = {f for f in Config.__dataclass_fields__ if hasattr(args, f)}
    return Config(**{name: getattr(args, name) for name in names})


def _run(args: argparse.Namespace) -> None:
    from jaxlin import run

    if args.command == "train":
        config = config_from_args(args).validate()
        run.train_and_evaluate(config, progress=not args.no_progress, dry_run=args.dry_run)
        return
    metrics = run.evaluate_saved(args.params, args.dataset, args.data_dir, args.model, args.device)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    print(f"Params: {metrics['params']} ({metrics['model']})")
    print(run.accuracy_line(metrics["test_accuracy"]) + f" of {metrics['num_examples']} images")
    per_class = "  ".join(f"{d}: {a:.1%}" for d, a in enumerate(metrics["per_class_accuracy"]))
    print(f"Per class: {per_class}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jaxlin.checkpoint import CheckpointError
    from jaxlin.data import DataError
    from jaxlin.models import ModelError
    from jaxlin.train import DivergenceError

    try:
        _run(args)
    except (ConfigError, DataError, ModelError, CheckpointError, DivergenceError) as err:
        print(f"jaxlin: error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, DivergenceError) else 3
    except OSError as err:  # e.g. the output directory filled up or vanished while writing
        print(f"jaxlin: error: cannot write outputs: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
