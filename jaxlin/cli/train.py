"""`jaxlin train`: train one model and write its checkpoints, records, metrics, figures and params."""

from __future__ import annotations

import argparse

from jaxlin.cli import hosts
from jaxlin.cli.flags import add_compile_cache_flag, add_config_flags, add_observation_flags, check_config, \
    check_observation_flags, config_from_args, given_settings, observation_settings, run_mode
from jaxlin.runtime.signals import StopRequest

# SIGINT/SIGTERM request a stop that the job honours between chunks: `run` gets a StopRequest.
STOPPABLE = True


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model and write checkpoints, records, metrics, figures and params",
        description="Train on MNIST; defaults reproduce the TensorFlow tutorial.")
    add_config_flags(p, "train")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir from its latest checkpoint; settings not "
                            "given come from the checkpoint, and given ones must match it, except "
                            "--num-steps, --data-dir, --keep-checkpoints, --checkpoint-every and --devices")
    modes.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --output-dir (only jaxlin's own files are removed)")
    p.add_argument("--dry-run", action="store_true",
                   help="check settings and data, print the plan, train and write nothing")
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures (scripted runs)")
    add_observation_flags(p)
    add_compile_cache_flag(p)
    hosts.add_flags(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def check(args: argparse.Namespace) -> None:
    """The settings, before JAX is imported: a bad value is one line in a tenth of a second."""
    check_config(args, config_from_args(args))
    check_observation_flags(args)


def run(args: argparse.Namespace, stop: StopRequest | None) -> int:
    # Started first: it imports matplotlib while this process imports JAX, loads data and trains.
    from jaxlin.runtime import timing

    worker = None
    if not (args.no_figures or args.dry_run or args.distributed or args.process_id):
        with timing.marks.phase("figure_worker_start"):
            from jaxlin.runs.figure_worker import FigureWorker

            worker = FigureWorker.start()
    try:
        return _train(args, stop, worker)
    finally:
        if worker is not None:
            worker.close()


def _train(args: argparse.Namespace, stop: StopRequest | None, worker) -> int:
    from jaxlin.cli.backend import start_backend
    from jaxlin.runs import train_run
    from jaxlin.runtime import timing

    # Interpreter start-up, imports and argument parsing: everything before this point but the worker's start.
    timing.marks["imports"] = timing.since_process_start() - timing.marks.get("figure_worker_start", 0.0)
    with timing.marks.phase("distributed_start"):
        hosts.start_distributed(args)
    start_backend(args)
    if stop is not None:
        stop.reinstall()
    config = config_from_args(args)
    if not args.resume:
        config.validate()
    train_run.train_and_evaluate(config, progress=not args.no_progress, dry_run=args.dry_run, mode=run_mode(args),
                                 explicit=given_settings(args), stop=stop, figures=not args.no_figures,
                                 figure_worker=worker, **observation_settings(args))
    return 0
