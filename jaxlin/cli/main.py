"""The console script and `main(argv)`: parse, check before JAX, dispatch, turn outcomes into exit codes.

`main` parses the flags (each command's parser comes from its module in `COMMANDS`), runs the
command's `check` before JAX is imported, runs a multi-process command under its supervising parent
(cli/hosts.py), installs the stop handling of SIGINT/SIGTERM, calls the command's `run(args, stop)`
and turns jaxlin's errors into one line and an exit code: 0 done, 2 a problem the user can fix
(`JaxlinError.exit_code`), 3 divergence, 1 lost peers, 128 + N stopped by signal N. `console` is the
`jaxlin` command: `main` with guarded streams (cli/streams.py) and a quick exit.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxlin.cli import compare, download, evaluate, hosts, predict, sweep, train
from jaxlin.cli.flags import _join_list_values, _Parser
from jaxlin.cli.streams import STREAMS, replace_unencodable
from jaxlin.config import ConfigError
from jaxlin.errors import JaxlinError
from jaxlin.runtime.signals import StopNow, StopRequest

# Command name -> its module: `add_parser(subparsers)`, `run(args, stop) -> exit code`, and optionally
# `check(args)` (settings checked before JAX is imported) and `STOPPABLE = True` (see _main_with_stops).
COMMANDS = {"train": train, "sweep": sweep, "evaluate": evaluate, "download": download, "predict": predict,
            "compare": compare}

# For tests: a path that jaxlin creates once its own SIGINT/SIGTERM handlers are installed, so that a
# test can send a signal relative to what the process is doing, not to a wall clock.
READY_FILE_ENV = "JAXLIN_TEST_READY_FILE"


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("jaxlin")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxlin",
        description=f"The TensorFlow MNIST linear-model tutorial in JAX: {', '.join(COMMANDS)}.")
    parser.add_argument("--version", action="version", version=f"jaxlin {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for command in COMMANDS.values():
        command.add_parser(subparsers)
    return parser


def check_settings(args: argparse.Namespace) -> None:
    """The command's settings, checked before JAX is imported: a bad value is one line in a tenth of a
    second, not after seconds of imports."""
    check = getattr(COMMANDS[args.command], "check", None)
    if check is not None:
        check(args)


def main(argv: list[str] | None = None) -> int:
    from jaxlin.runtime import supervise, timing

    replace_unencodable()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(_join_list_values(argv))
    try:
        check_settings(args)  # before JAX is imported
    except JaxlinError as err:
        print(f"jaxlin: error: {err}", file=sys.stderr)
        return err.exit_code
    timing.marks.start_command()
    child = supervise.is_child()
    if child:
        supervise.route_runtime_output()
        if STREAMS.on:  # the new streams too (in the `jaxlin` command, not in-process calls)
            STREAMS.guard()
        code = _main_with_stops(args, child)
        if code:  # skip JAX's shutdown barrier, which would wait for peers that may be gone
            supervise.exit_at_once(code)
        return code
    try:
        distributed = hosts.distributed_flags(args) is not None
    except ConfigError as err:
        print(f"jaxlin: error: {err}", file=sys.stderr)
        return 2
    if distributed:
        return hosts.supervise(args, argv)
    return _main_with_stops(args, child)


def _main_with_stops(args: argparse.Namespace, child: bool) -> int:
    if not getattr(COMMANDS[args.command], "STOPPABLE", False):
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


def _signal_ready() -> None:
    path = os.environ.get(READY_FILE_ENV)
    if path:
        try:
            with open(path, "a"):
                pass
        except OSError:
            pass


def _main(args: argparse.Namespace, stop: StopRequest | None) -> int:
    from jaxlin.runs.session import Stopped  # the heavy imports (JAX, orbax): done before raise_pending
    from jaxlin.runtime import supervise

    if stop is not None:
        stop.raise_pending()  # the heavy imports (JAX) are done
    try:
        code = supervise.run_reporting_runtime_failures(COMMANDS[args.command].run, args, stop)  # a lost peer
    except Stopped as stopped:
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    except JaxlinError as err:  # what the user can fix: one line and its exit code
        print(f"jaxlin: error: {err}", file=sys.stderr)
        return err.exit_code
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
        print(f"jaxlin: stopped by {stop.name}", file=sys.stderr)
        return stop.exit_code
    return code


def _several_processes() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        return sys.modules["jax"].process_count() > 1
    except Exception:  # a backend that never started: one process
        return False


def console() -> None:
    """The `jaxlin` command: `main`, then an exit that skips the interpreter's teardown of JAX and
    its threads (a third of a second here) once every output is written and flushed. A run of
    several processes exits normally: JAX's shutdown barrier lets the processes leave together."""
    STREAMS.guard()
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


if __name__ == "__main__":  # `python -m jaxlin.cli.main`, as `python -m jaxlin.cli`
    console()
