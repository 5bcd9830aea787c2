"""`jaxlin sweep`: train the cross product of the values given in one compiled program and pick the best."""

from __future__ import annotations

import argparse
import sys

from jaxlin.cli import hosts
from jaxlin.cli.flags import add_compile_cache_flag, add_config_flags, add_observation_flags, check_config, \
    check_observation_flags, config_from_args, float_list, given_settings, int_list, observation_settings, run_mode
from jaxlin.config import Config, ConfigError, check_grid_size, check_no_repeats, check_setting
from jaxlin.runtime.signals import StopRequest

# SIGINT/SIGTERM request a stop that the job honours between chunks: `run` gets a StopRequest.
STOPPABLE = True
OUTPUT_DIR = "jaxlin-sweep"  # the default --output-dir of a sweep
# The sweep's lists, as the Config setting each value of them is.
GRID_LISTS = {"learning_rates": "learning_rate", "momentums": "momentum", "seeds": "seed",
              "data_seeds": "data_seed", "weight_decays": "weight_decay", "clip_norms": "clip_norm"}


# The settings a sweep uses differently from `jaxlin train` (the rest mean the same for every member).
SWEEP_HELP = {
    "output_dir": f"directory for checkpoints, records, sweep.json, sweep.png and best/ (default: {OUTPUT_DIR})",
    "devices": "how many of --device's devices the members are sharded over (a number, or all)",
    "eval_every": "evaluate every member's validation accuracy every N steps (default: every 100 steps, or at "
                  "round intervals (200, 500, 1000, ...) that keep a sweep to at most 50 evaluations)",
    "loop": "fused (a sweep trains its members in the fused loop only)",
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="train many models at once in one compiled program; choose the best by validation",
        description="Train the cross product of the values given together (jax.vmap over the members inside "
                    "the fused loop), select the member with the best final validation accuracy, and report "
                    "its test accuracy. Every `jaxlin train` setting applies to all members.")
    grid = p.add_argument_group("what the members vary (comma-separated; the cross product is swept)")
    grid.add_argument("--learning-rates", type=float_list, metavar="X[,X...]", help="default: --learning-rate")
    grid.add_argument("--momentums", type=float_list, metavar="X[,X...]",
                      help="for --optimizer momentum; default: --momentum")
    grid.add_argument("--weight-decays", type=float_list, metavar="X[,X...]",
                      help="weight decays (0: none); default: --weight-decay")
    grid.add_argument("--clip-norms", type=float_list, metavar="X[,X...]",
                      help="gradient clipping norms (0: no clipping); default: --clip-norm. The schedule and its "
                           "warm-up are shared by all members")
    grid.add_argument("--seeds", type=int_list, metavar="N[,N...]", help="init seeds; default: --seed")
    grid.add_argument("--data-seeds", type=int_list, metavar="N[,N...]",
                      help="give members their own batch orders (slower: each gathers its own batch); "
                           "default: one order, --data-seed's or else --seed's, shared by all")
    add_config_flags(p, "train", help_for=SWEEP_HELP)
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--resume", action="store_true",
                       help="continue the sweep in --output-dir from its latest checkpoint")
    modes.add_argument("--overwrite", action="store_true", help="replace the sweep already in --output-dir")
    p.add_argument("--dry-run", action="store_true",
                   help="check settings and data, print the plan and the memory it needs, train nothing")
    add_observation_flags(p)
    add_compile_cache_flag(p)
    hosts.add_flags(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(output_dir_default=OUTPUT_DIR)


def check(args: argparse.Namespace) -> None:
    """The settings and the grid, before JAX is imported: a bad value is one line in a tenth of a second."""
    config = config_from_args(args)
    _check_grid(args, config)
    check_config(args, config)
    check_observation_flags(args)


def _check_single_or_list(args: argparse.Namespace) -> None:
    for single, plural in (("learning_rate", "learning_rates"), ("momentum", "momentums"),
                           ("weight_decay", "weight_decays"), ("clip_norm", "clip_norms")):
        if single in given_settings(args) and getattr(args, plural) is not None:
            raise ConfigError(f"give --{single.replace('_', '-')} or --{plural.replace('_', '-')}, not both")


def _check_grid(args: argparse.Namespace, config: Config) -> None:
    """The sweep's lists: the grid's size from their lengths alone (before any member exists), then
    each value as the setting it becomes in a member."""
    from jaxlin import optimizers

    _check_single_or_list(args)
    flags = {plural: f"--{plural.replace('_', '-')}" for plural in GRID_LISTS}
    check_grid_size({flags[plural]: len(getattr(args, plural) or (None,)) for plural in GRID_LISTS})
    takes = getattr(optimizers.REGISTRY.get(config.optimizer), "hyperparameters", ("learning_rate",))
    if args.momentums is not None and not args.resume and "momentum" not in takes:
        raise ConfigError(f"--momentums: the {config.optimizer} optimizer takes no momentum "
                          f"(use --optimizer momentum)")
    if args.weight_decays is not None and not args.resume:
        for value in args.weight_decays:  # each member's, against the optimizer (adam: adamw; sgd: added)
            optimizers.check_settings(config.replace(weight_decay=value), "--weight-decays")
    for plural, single in GRID_LISTS.items():
        values = getattr(args, plural)
        if values is None:
            continue
        check_no_repeats(flags[plural], values)
        for value in values:
            try:
                check_setting(single, value)
            except ConfigError as err:
                raise ConfigError(f"{flags[plural]}: {err}") from None


def run(args: argparse.Namespace, stop: StopRequest | None) -> int:
    from jaxlin.cli.backend import start_backend
    from jaxlin.runs.sweep_run import run_sweep
    from jaxlin.training.sweep import Grid

    hosts.start_distributed(args)
    start_backend(args)
    if stop is not None:
        stop.reinstall()
    config = config_from_args(args)
    _check_single_or_list(args)
    if not args.resume:
        config.validate()
    grid = Grid(args.learning_rates, args.momentums, args.seeds, args.data_seeds, args.weight_decays,
                args.clip_norms)
    summary = run_sweep(config, grid, progress=not args.no_progress, dry_run=args.dry_run, mode=run_mode(args),
                        explicit=given_settings(args), stop=stop, **observation_settings(args))
    if summary is not None and summary["best"] is None:
        print("jaxlin: error: every member of the sweep diverged (try smaller learning rates)", file=sys.stderr)
        return 3
    return 0
