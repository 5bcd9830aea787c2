"""The `jaxlin` command line: a thin layer that turns flags into a Config and runs a job.

The flags of `Config` settings are generated from its fields (type, default, help and
choices), so every setting has one. Their defaults are left out of the parsed namespace
(`argparse.SUPPRESS`): the job learns which settings were given, which `--resume`
needs to take the others from the checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from jaxlin.config import CONFIG_FIELDS, Config, ConfigError, check_grid_size, check_no_repeats, check_setting
from jaxlin.runtime.signals import StopNow, StopRequest

DEFAULTS = Config()


def _hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be integers >= 1, got {text!r}")
    return sizes


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


_PARSERS = {int: int, float: float, str: _non_empty, tuple[int, ...]: _hidden_sizes}


def _parse_type(annotation):
    """int, float, str or tuple[int, ...], also when optional (`X | None`)."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is tuple:
        options = [annotation]
    return _PARSERS[options[0]]


def _show_default(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """One flag per Config field used by `command`, generated from the field."""
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if command not in meta["commands"]:
            continue
        default = field.default
        help_text = meta["help"] + ("" if default is None or "default" in meta["help"]
                                    else f" (default: {_show_default(default)})")
        parse = _parse_type(hints[field.name])
        metavar = meta["metavar"] or {int: "N", float: "X"}.get(parse)
        parser.add_argument(f"--{field.name.replace('_', '-')}", *meta["aliases"], dest=field.name, type=parse,
                            choices=meta["choices"], metavar=metavar, default=argparse.SUPPRESS, help=help_text)


def _train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model and write checkpoints, records, metrics, figures and params",
        description="Train on MNIST; defaults reproduce the TensorFlow tutorial.")
    add_config_flags(p, "train")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir from its latest checkpoint; settings not "
                            "given come from the checkpoint, and given ones must match it, except "
                            "--num-steps, --data-dir, --keep-checkpoints and --devices")
    modes.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --output-dir (only jaxlin's own files are removed)")
    p.add_argument("--dry-run", action="store_true",
                   help="check settings and data, print the plan, train and write nothing")
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures (scripted runs)")
    _add_compile_cache_flag(p)
    hosts = p.add_argument_group(
        "several processes (hosts)", "join a multi-process run through jax.distributed; process 0 writes the outputs")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", type=_non_empty,
                       help="address of process 0's coordinator service")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="how many processes take part")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process's number, 0..N-1")
    hosts.add_argument("--distributed", action="store_true",
                       help="join with settings JAX detects (Slurm, Open MPI, ...)")
    hosts.add_argument("--distributed-timeout", type=int, default=60, metavar="S",
                       help="seconds to wait for the coordinator and the other processes (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _float_list(text: str) -> tuple[float, ...]:
    return _number_list(text, float)


def _int_list(text: str) -> tuple[int, ...]:
    return _number_list(text, int)


def _number_list(text: str, kind) -> tuple:
    parts = text.split(",")
    if len(parts) > 1 and any(not part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}")
    try:
        values = tuple(kind(part) for part in parts if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


# The flags that take comma-separated lists: a list that starts with a negative number (`--seeds -1,2`)
# is not a number to argparse, which takes it for a flag (see `_join_list_values`).
LIST_FLAGS = ("--learning-rates", "--momentums", "--seeds", "--data-seeds", "--hidden-sizes")
# The sweep's lists, as the Config setting each value of them is.
GRID_LISTS = {"learning_rates": "learning_rate", "momentums": "momentum", "seeds": "seed",
              "data_seeds": "data_seed"}


def _join_list_values(argv: list[str]) -> list[str]:
    """`--seeds -1,2` as `--seeds=-1,2`, which argparse reads as the flag's value; the value is then
    checked like any other (and a negative seed refused by name)."""
    joined, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return joined + argv[i:]
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if token in LIST_FLAGS and following.startswith("-") and not following.startswith("--") \
                and following != "-h":
            joined.append(f"{token}={following}")
            i += 2
            continue
        joined.append(token)
        i += 1
    return joined


SWEEP_OUTPUT_DIR = "jaxlin-sweep"


def _add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="compile everything afresh: do not read or write JAX's persistent compilation cache "
                             "(kept in jaxlin's cache directory; also JAXLIN_COMPILE_CACHE=0)")


def _sweep_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="train many models at once in one compiled program; choose the best by validation",
        description="Train the cross product of the values given together (jax.vmap over the members inside "
                    "the fused loop), select the member with the best final validation accuracy, and report "
                    "its test accuracy. Every `jaxlin train` setting applies to all members.")
    grid = p.add_argument_group("what the members vary (comma-separated; the cross product is swept)")
    grid.add_argument("--learning-rates", type=_float_list, metavar="X[,X...]", help="default: --learning-rate")
    grid.add_argument("--momentums", type=_float_list, metavar="X[,X...]",
                      help="for --optimizer momentum; default: --momentum")
    grid.add_argument("--seeds", type=_int_list, metavar="N[,N...]", help="init seeds; default: --seed")
    grid.add_argument("--data-seeds", type=_int_list, metavar="N[,N...]",
                      help="give members their own batch orders (slower: each gathers its own batch); "
                           "default: one order, --data-seed's or else --seed's, shared by all")
    add_config_flags(p, "train")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--resume", action="store_true",
                       help="continue the sweep in --output-dir from its latest checkpoint")
    modes.add_argument("--overwrite", action="store_true", help="replace the sweep already in --output-dir")
    p.add_argument("--dry-run", action="store_true",
                   help="check settings and data, print the plan and the memory it needs, train nothing")
    _add_compile_cache_flag(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(output_dir_default=SWEEP_OUTPUT_DIR)


def _evaluate_parser(subparsers) -> None:
    from jaxlin.config import MODELS

    p = subparsers.add_parser("evaluate", help="report test-set metrics of saved params",
                              description="Reload a params.npz written by `jaxlin train` and evaluate it.")
    p.add_argument("params", help="path to a params.npz")
    add_config_flags(p, "evaluate")
    p.add_argument("--model", choices=MODELS, default=None,
                   help="check that the params are for this model (default: the model the file names)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (and exit 2), pointing at --help instead of printing the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _download_parser(subparsers) -> None:
    from jaxlin.config import DATASETS

    p = subparsers.add_parser(
        "download", help="fetch and verify a data set ahead of time, or verify a directory",
        description="Download the four IDX files of a data set from public mirrors ($JAXLIN_MIRRORS replaces "
                    "them), verify each by the sha256 of its uncompressed content, and keep them in jaxlin's "
                    "cache ($JAXLIN_CACHE_DIR, else $XDG_CACHE_HOME/jaxlin, else ~/.cache/jaxlin) or --dir.")
    p.add_argument("--dataset", choices=DATASETS, default=DEFAULTS.dataset, help="default: %(default)s")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--dir", type=_non_empty, help="download into DIR instead of the cache")
    target.add_argument("--verify", type=_non_empty, metavar="DIR",
                        help="check the files already in DIR; download nothing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _predict_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="classify image files of digits with saved params",
        description="Classify PNG/JPEG images of single digits: each is made into an MNIST image (grayscale, "
                    "white on black, cropped, scaled into 20x20, centred by mass in 28x28) and classified.")
    p.add_argument("params", help="path to a params.npz written by `jaxlin train`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--top", type=int, default=3, help="how many probabilities to show (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")


def _predict(args: argparse.Namespace) -> int:
    from jaxlin.runs.predict import predict_files

    if not 1 <= args.top <= 10:
        raise ConfigError(f"--top must be in 1..10, got {args.top}")
    import jax

    _jax_devices(jax)
    results = predict_files(args.params, args.images)
    if args.json:
        print(json.dumps([{"path": r.path, "label": r.label, "probabilities": r.probabilities, "error": r.error}
                          for r in results], indent=2))
    for result in results:
        if result.error:
            print(f"jaxlin: error: {result.error}", file=sys.stderr)
        elif not args.json:
            top = ", ".join(f"{label}: {p:.1%}" for label, p in result.top(args.top))
            print(f"{result.path}: {result.label}  ({top})")
    return 2 if any(r.error for r in results) else 0


def _download(args: argparse.Namespace) -> None:
    from jaxlin.data import download

    if args.verify:
        for line in download.verify(args.verify, args.dataset):
            print(line)
        print(f"All four {args.dataset} files in {args.verify} verify.")
        return
    directory = download.download(args.dataset, args.dir, progress=not args.no_progress)
    print(f"{args.dataset}: the four IDX files are in {directory}, verified.")


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("jaxlin")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxlin",
        description="The TensorFlow MNIST linear-model tutorial in JAX: train, sweep, evaluate, download, predict.")
    parser.add_argument("--version", action="version", version=f"jaxlin {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{train,sweep,evaluate,download,predict}")
    _train_parser(subparsers)
    _sweep_parser(subparsers)
    _evaluate_parser(subparsers)
    _download_parser(subparsers)
    _predict_parser(subparsers)
    return parser


def given_settings(args: argparse.Namespace) -> set[str]:
    """The Config fields set on the command line."""
    return {name for name in CONFIG_FIELDS if hasattr(args, name)}


def config_from_args(args: argparse.Namespace) -> Config:
    config = Config(**{name: getattr(args, name) for name in given_settings(args)})
    if "output_dir" not in given_settings(args) and hasattr(args, "output_dir_default"):
        config = config.replace(output_dir=args.output_dir_default)
    return config


def check_settings(args: argparse.Namespace) -> None:
    """The settings of `train` and `sweep`, checked before JAX is imported: a bad value is one line
    in a tenth of a second, not after seconds of imports. With --resume, only what each given value
    shows alone (the checkpoint holds the others); the data set's size is checked once it is loaded."""
    if args.command not in ("train", "sweep"):
        return
    config = config_from_args(args)
    if args.command == "sweep":
        _check_grid(args, config)
    if args.resume:
        config.validate_fields(given_settings(args))
    else:
        config.validate()


def _check_grid(args: argparse.Namespace, config: Config) -> None:
    """The sweep's lists: the grid's size from their lengths alone (before any member exists), then
    each value as the setting it becomes in a member."""
    from jaxlin import optimizers

    for single, plural in (("learning_rate", "learning_rates"), ("momentum", "momentums")):
        if single in given_settings(args) and getattr(args, plural) is not None:
            raise ConfigError(f"give --{single.replace('_', '-')} or --{plural.replace('_', '-')}, not both")
    flags = {plural: f"--{plural.replace('_', '-')}" for plural in GRID_LISTS}
    check_grid_size({flags[plural]: len(getattr(args, plural) or (None,)) for plural in GRID_LISTS})
    if args.momentums is not None and not args.resume \
            and "momentum" not in optimizers.spec(config.optimizer).hyperparameters:
        raise ConfigError(f"--momentums: the {config.optimizer} optimizer takes no momentum "
                          f"(use --optimizer momentum)")
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


def _distributed_flags(args: argparse.Namespace) -> tuple | None:
    """The validated (coordinator, num_processes, process_id) of a multi-process run, or None."""
    if args.command != "train":
        return None
    manual = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(value is None for value in manual):
        return None
    if not args.distributed and any(value is None for value in manual):
        raise ConfigError("--coordinator, --num-processes and --process-id go together (or use --distributed)")
    if args.coordinator is not None and not args.coordinator.isascii():  # int() reads '²' as a digit it is not
        raise ConfigError(f"--coordinator {args.coordinator}: expected HOST:PORT (a host name or IP address, "
                          f"a port in 1..65535)")
    if args.num_processes is not None and args.num_processes < 1:
        raise ConfigError(f"--num-processes must be at least 1, got {args.num_processes}")
    if args.distributed_timeout < 1:
        raise ConfigError(f"--distributed-timeout must be at least 1 second, got {args.distributed_timeout}")
    if args.num_processes is not None and not 0 <= (args.process_id or 0) < args.num_processes:
        raise ConfigError(f"--process-id must be in 0..{args.num_processes - 1}, got {args.process_id}")
    return manual


def _start_distributed(args: argparse.Namespace) -> None:
    manual = _distributed_flags(args)
    if manual is None:
        return
    from jaxlin.runtime import supervise
    from jaxlin.runtime.devices import start_distributed

    start_distributed(*manual, timeout_seconds=args.distributed_timeout)
    supervise.report_joined()
    from jaxlin.runtime.devices import check_same_everywhere

    # JAX takes the number of processes from process 0: a process told another number is misconfigured.
    check_same_everywhere(f"--num-processes {args.num_processes}")


def _supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """A multi-process `jaxlin train` runs under a parent that reports runtime failures (supervise.py)."""
    from jaxlin.runtime import supervise

    coordinator, num_processes, process_id = _distributed_flags(args)
    where = f"coordinator {coordinator}" if coordinator else "the cluster's coordinator"
    process = f"process {process_id} (of {num_processes})" if coordinator else "this process"
    return supervise.run_supervised(argv, where, process, args.output_dir if "output_dir" in given_settings(args)
                                    else DEFAULTS.output_dir)


def _start_backend(args: argparse.Namespace) -> None:
    """The compilation cache (before anything compiles) and JAX's backend, timed for the breakdown."""
    import time

    import jax

    from jaxlin.runtime import compile_cache


    from jaxlin.runtime import timing
    timing.marks["compile_cache_enabled"] = compile_cache.enable(args.no_compile_cache) is not None
    tick = time.perf_counter()
    _jax_devices(jax)
    timing.marks["backend_start"] = time.perf_counter() - tick


def _jax_devices(jax) -> list:
    """JAX's devices; a backend that cannot start (JAX_PLATFORMS=tpu without a TPU) is one line."""
    try:
        return jax.devices()
    except Exception as err:  # RuntimeError for an unknown platform, AssertionError for a missing plugin
        platforms = os.environ.get("JAX_PLATFORMS")
        where = f" (JAX_PLATFORMS={platforms})" if platforms else ""
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ConfigError(f"JAX could not start its backend{where}: {first}") from None


def _train(args: argparse.Namespace, stop: StopRequest | None, worker) -> int:
    from jaxlin.runs import train_run as run

    from jaxlin.runtime import timing
    timing.marks["imports"] = timing.since_process_start()
    _start_distributed(args)
    _start_backend(args)
    if stop is not None:
        stop.reinstall()
    config = config_from_args(args)
    if not args.resume:
        config.validate()
    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    run.train_and_evaluate(config, progress=not args.no_progress, dry_run=args.dry_run, mode=mode,
                           explicit=given_settings(args), stop=stop, figures=not args.no_figures,
                           figure_worker=worker)
    return 0


def _sweep(args: argparse.Namespace, stop: StopRequest | None) -> int:
    from jaxlin.training.sweep import Grid
    from jaxlin.runs.sweep_run import run_sweep

    _start_backend(args)
    config = config_from_args(args)
    for single, plural in (("learning_rate", "learning_rates"), ("momentum", "momentums")):
        if single in given_settings(args) and getattr(args, plural) is not None:
            raise ConfigError(f"give --{single.replace('_', '-')} or --{plural.replace('_', '-')}, not both")
    if not args.resume:
        config.validate()
    grid = Grid(args.learning_rates, args.momentums, args.seeds, args.data_seeds)
    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    summary = run_sweep(config, grid, progress=not args.no_progress, dry_run=args.dry_run, mode=mode,
                        explicit=given_settings(args), stop=stop)
    if summary is not None and summary["best"] is None:
        print("jaxlin: error: every member of the sweep diverged (try smaller learning rates)", file=sys.stderr)
        return 3
    return 0


def _run(args: argparse.Namespace, stop: StopRequest | None) -> int:
    if args.command == "train":
        # Started first: it imports matplotlib while this process imports JAX, loads data and trains.
        worker = None
        if not (args.no_figures or args.dry_run or args.distributed or args.process_id):
            from jaxlin.runs.figure_worker import FigureWorker

            worker = FigureWorker.start()
        try:
            return _train(args, stop, worker)
        finally:
            if worker is not None:
                worker.close()
    from jaxlin.runs import train_run as run

    if args.command == "sweep":
        return _sweep(args, stop)
    if args.command == "download":
        _download(args)
        return 0
    if args.command == "predict":
        return _predict(args)
    settings = {name: getattr(args, name, getattr(DEFAULTS, name))
                for name in ("dataset", "data_dir", "device", "source")}
    import jax

    _jax_devices(jax)
    metrics = run.evaluate_saved(args.params, settings["dataset"], settings["data_dir"], args.model,
                                 settings["device"], settings["source"])
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"Params: {metrics['params']} ({metrics['model']})")
    print(run.accuracy_line(metrics["test_accuracy"]) + f" of {metrics['num_examples']} images")
    per_class = "  ".join(f"{d}: {a:.1%}" for d, a in enumerate(metrics["per_class_accuracy"]))
    print(f"Per class: {per_class}")
    return 0


def _replace_unencodable() -> None:
    """Characters the streams' encoding lacks (`PYTHONIOENCODING=ascii`, a C locale) are written as
    backslash escapes instead of raising UnicodeEncodeError: messages name paths, which may hold any."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream.errors == "strict":
                stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # None, or a stream that cannot change
            pass


def main(argv: list[str] | None = None) -> int:
    from jaxlin.runtime import supervise

    _replace_unencodable()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(_join_list_values(argv))
    try:
        check_settings(args)  # before JAX is imported
    except ConfigError as err:
        print(f"jaxlin: error: {err}", file=sys.stderr)
        return 2
    child = supervise.is_child()
    if child:
        supervise.route_runtime_output()
        if _streams_guarded:  # the new streams too (in the `jaxlin` command, not in-process calls)
            _guard_streams()
        code = _main_with_stops(args, child)
        if code:  # skip JAX's shutdown barrier, which would wait for peers that may be gone
            supervise.exit_at_once(code)
        return code
    try:
        distributed = _distributed_flags(args) is not None
    except ConfigError as err:
        print(f"jaxlin: error: {err}", file=sys.stderr)
        return 2
    if distributed:
        return _supervise(args, argv)
    return _main_with_stops(args, child)


def _main_with_stops(args: argparse.Namespace, child: bool) -> int:
    if args.command not in ("train", "sweep"):
        try:
            return _main(args, None)
        except StopNow as now:  # raised by download.py's handlers: its partial files are removed
            print(f"jaxlin: stopped by {now}", file=sys.stderr)
            return 128 + now.signum
        except KeyboardInterrupt:
            print("jaxlin: interrupted", file=sys.stderr)
            return 130
    # From here on SIGINT/SIGTERM only request a stop, which training honours where it is safe:
    # a KeyboardInterrupt raised inside JAX's import or a garbage-collector callback could be lost.
    # Under a supervising parent, the parent turns a second signal into "at once".
    with StopRequest(repeat_exits=not child, raise_now=False) as stop:
        _signal_ready()
        try:
            return _main(args, stop)
        except StopNow as now:  # during imports, a download or loading the data
            print(f"jaxlin: stopped by {now} before training started; nothing saved", file=sys.stderr)
            return 128 + now.signum
        except Exception:
            if not (stop and not stop.deferred):
                raise
            # The StopNow landed inside an extension module's initialisation (jaxlib's), which turns
            # any exception into an ImportError: it is still the user's stop.
            print(f"jaxlin: stopped by {stop.name} before training started; nothing saved", file=sys.stderr)
            return stop.exit_code


# For tests: a path that jaxlin creates once its own SIGINT/SIGTERM handlers are installed, so that a
# test can send a signal relative to what the process is doing, not to a wall clock.
READY_FILE_ENV = "JAXLIN_TEST_READY_FILE"


def _signal_ready() -> None:
    path = os.environ.get(READY_FILE_ENV)
    if path:
        try:
            with open(path, "a"):
                pass
        except OSError:
            pass


def _main(args: argparse.Namespace, stop: StopRequest | None) -> int:
    from jaxlin.runtime import supervise
    from jaxlin.runs.params_file import CheckpointError
    from jaxlin.data.datasets import DataError
    from jaxlin.data.download import DownloadError
    from jaxlin.models import ModelError
    from jaxlin.runs.predict import ImageError
    from jaxlin.runs.train_run import Stopped
    from jaxlin.runs.rundir import RunDirError
    from jaxlin.training.trainer import DivergenceError

    if stop is not None:
        stop.raise_pending()  # the heavy imports (JAX) are done
    try:
        code = supervise.run_reporting_runtime_failures(_run, args, stop)  # a lost peer: one line
    except Stopped as stopped:
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    except (ConfigError, DataError, DownloadError, ModelError, CheckpointError, RunDirError, ImageError,
            DivergenceError) as err:
        print(f"jaxlin: error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, DivergenceError) else 3
    except OSError as err:  # e.g. the output directory filled up or vanished while writing
        print(f"jaxlin: error: cannot write outputs: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if type(err).__name__ not in ("JaxRuntimeError", "XlaRuntimeError") or not supervise.routed():
            raise
        # A collective with a peer failed (it died or stopped answering): one line, not JAX's traceback.
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        print(f"jaxlin: error: lost the other processes of this run: {first}", file=sys.stderr)
        return 1
    if stop:  # a signal that came after the job had nothing left to stop
        return _interrupted(stop)
    return code


def _interrupted(stop: StopRequest) -> int:
    print(f"jaxlin: stopped by {stop.name}", file=sys.stderr)
    return stop.exit_code


def _several_processes() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        return sys.modules["jax"].process_count() > 1
    except Exception:  # a backend that never started: one process
        return False


class _DropWhenGone:
    """stdout or stderr whose reader went away (`jaxlin train | head -1`): a write to it would raise
    BrokenPipeError in the middle of the run. From the first one on, what is written there is dropped,
    as most Unix tools do, and the run goes on to write its outputs and exits with its own code."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        # Python's documented recipe: the descriptor now leads to /dev/null, so what is still buffered
        # and everything written later go nowhere, without an error (nor one at exit).
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass


_streams_guarded = False


def _guard_streams() -> None:
    """stdout and stderr that are closed (`jaxlin train >&-`) or whose reader goes away do not end
    the run: a closed one becomes /dev/null (and its descriptor is taken, so that no file opened
    later gets it), and writes to a broken pipe are dropped."""
    global _streams_guarded
    _streams_guarded = True
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:  # Python found the descriptor closed when it started
            try:
                os.fstat(fd)
            except OSError:
                null = os.open(os.devnull, os.O_WRONLY)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
        stream = getattr(sys, name)
        if not isinstance(stream, _DropWhenGone):
            setattr(sys, name, _DropWhenGone(stream))


def console() -> None:
    """The `jaxlin` command: `main`, then an exit that skips the interpreter's teardown of JAX and
    its threads (a third of a second here) once every output is written and flushed. A run of
    several processes exits normally: JAX's shutdown barrier lets the processes leave together."""
    _guard_streams()
    try:
        code = main()
    except KeyboardInterrupt:  # before jaxlin's own handlers were installed
        print("jaxlin: interrupted", file=sys.stderr)
        code = 130
    if _several_processes():
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
