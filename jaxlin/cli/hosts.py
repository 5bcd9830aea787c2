"""Several processes (hosts) for a command: the flags, their checks, joining, and the supervising parent.

A command that can run across processes adds the flag group with `add_flags` (train and sweep do).
With those flags, `main` runs the command under a parent (`supervise`, see
jaxlin/runtime/supervise.py) and the supervised child joins the run (`start_distributed`) before JAX's
backend starts. Nothing here imports JAX at import time.
"""

from __future__ import annotations

import argparse

from jaxlin.cli.flags import config_from_args, non_empty
from jaxlin.config import ConfigError


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The "several processes (hosts)" flag group."""
    hosts = parser.add_argument_group(
        "several processes (hosts)", "join a multi-process run through jax.distributed; process 0 writes the outputs")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", type=non_empty,
                       help="address of process 0's coordinator service")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="how many processes take part")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process's number, 0..N-1")
    hosts.add_argument("--distributed", action="store_true",
                       help="join with settings JAX detects (Slurm, Open MPI, ...)")
    hosts.add_argument("--distributed-timeout", type=int, default=60, metavar="S",
                       help="seconds to wait for the coordinator and the other processes (default: %(default)s)")
    parser.set_defaults(several_processes=True)


def distributed_flags(args: argparse.Namespace) -> tuple | None:
    """The validated (coordinator, num_processes, process_id) of a multi-process run, or None (also for a
    command without the flag group)."""
    if not getattr(args, "several_processes", False):
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


def start_distributed(args: argparse.Namespace) -> None:
    """In the supervised child: joins the multi-process run (nothing for a single process)."""
    manual = distributed_flags(args)
    if manual is None:
        return
    from jaxlin.runtime import supervise
    from jaxlin.runtime.distributed import check_same_everywhere, start_distributed as start

    start(*manual, timeout_seconds=args.distributed_timeout)
    supervise.report_joined()
    # JAX takes the number of processes from process 0: a process told another number is misconfigured.
    check_same_everywhere(f"--num-processes {args.num_processes}")


def supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """A multi-process run of `args.command` runs under a parent that reports runtime failures
    (jaxlin/runtime/supervise.py); returns the exit code."""
    from jaxlin.runtime import supervise

    coordinator, num_processes, process_id = distributed_flags(args)
    where = f"coordinator {coordinator}" if coordinator else "the cluster's coordinator"
    process = f"process {process_id} (of {num_processes})" if coordinator else "this process"
    output_dir = config_from_args(args).output_dir
    return supervise.run_supervised(argv, where, process, output_dir, lambda: resume_hint(args.command, output_dir))


def resume_hint(command: str, output_dir: str) -> str:
    """What the supervisor adds to its last line: how to resume, when there is a checkpoint."""
    from jaxlin.runs.rundir import has_checkpoints, resume_command

    if not has_checkpoints(output_dir):
        return ""
    return f". Resume with: {resume_command(command, output_dir, several_processes=True)}"
