"""Several processes (hosts) of one run: joining them through `jax.distributed`, and the few
decisions they must share (who writes, whether to stop, whether one of them failed).

One process (the default) needs none of it: every function here is then a no-op or answers for
the one process, without a message. Over several processes a run's chunks are the same SPMD
program on every process; what the host decides between chunks (stop now? did a check fail?)
is exchanged here, so that no process waits for a peer that has given up.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from jaxlin.errors import ConfigError


def start_distributed(coordinator: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None, timeout_seconds: int = 60) -> None:
    """Joins this process to a multi-process run (`jax.distributed.initialize`) before JAX starts.

    With no arguments JAX detects the cluster (Slurm, Open MPI, ...). On CPUs the processes talk
    through gloo. A coordinator that cannot be reached is an error after `timeout_seconds`; a peer
    that dies ends the others after as long.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        host, port = _host_port(coordinator)
        if process_id == 0:
            _check_port_free(port, coordinator)
        if process_id:
            # JAX's client ends the whole process (a C++ check failure) when it cannot register with
            # the coordinator; find out first, and say so in one line.
            _wait_for_coordinator(host, port, coordinator, timeout_seconds)
    try:
        # A peer that stops sending heartbeats for `timeout_seconds` ends the run (JAX's runtime
        # terminates the other processes, naming the task that died), so nothing hangs.
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=timeout_seconds,
                                   heartbeat_timeout_seconds=max(10, timeout_seconds),
                                   shutdown_timeout_seconds=max(30, timeout_seconds))
    except (RuntimeError, ValueError) as err:  # XlaRuntimeError is a RuntimeError
        where = f"coordinator {coordinator}" if coordinator else "the cluster's coordinator"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ConfigError(f"cannot join the distributed run through {where} within {timeout_seconds} s: "
                          f"{first}") from err


def _host_port(coordinator: str) -> tuple[str, int]:
    """HOST and PORT, checked by their form alone (nothing is looked up)."""
    import ipaddress
    import re

    host, _, port = coordinator.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    valid_host = bool(bare)
    if valid_host and re.fullmatch(r"[\d.]+", bare) or ":" in bare:
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            valid_host = False
    elif valid_host:
        valid_host = re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", bare) is not None
    if not valid_host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator {coordinator}: expected HOST:PORT (a host name or IP address, "
                          f"a port in 1..65535)")
    return bare, int(port)


def _check_port_free(port: int, coordinator: str) -> None:
    """Process 0 refuses a coordinator port another program listens on. (JAX's service would share it:
    gRPC sets SO_REUSEPORT, so a second run would take over the first's processes.)"""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's TIME_WAIT is no conflict
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as err:
            raise ConfigError(f"--coordinator {coordinator}: port {port} is in use on this host (another run? "
                              f"{err.strerror or err}); choose another port") from err


def _wait_for_coordinator(host: str, port: int, coordinator: str, timeout_seconds: float) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise ConfigError(f"cannot reach the coordinator {coordinator} within {timeout_seconds} s "
                                  f"({err.strerror or err}); is process 0 running?") from err
            time.sleep(0.2)


@contextlib.contextmanager
def failing_together(*errors: type[BaseException]):
    """Runs a step that may fail on some processes only (a check that process 0 makes, the data a
    host loads), then lets every process know: the one that failed raises its own error, the others
    a ConfigError naming it, so no process waits for a peer that has given up. One process: no-op."""
    if jax.process_count() == 1:
        yield
        return
    error = None
    try:
        yield
    except errors as err:
        error = err
    from jax.experimental import multihost_utils

    failed = np.asarray(multihost_utils.process_allgather(np.array([error is not None], np.int32))).ravel()
    if error is not None:
        raise error
    if failed.any():
        raise ConfigError(f"process {int(np.flatnonzero(failed)[0])} of this run failed before training "
                          f"(its own message says why); every process stops")


def is_primary() -> bool:
    """Process 0 of a multi-process run (or the only process) writes the run's files."""
    return jax.process_index() == 0


def max_over_processes(value: int) -> int:
    """The largest of every process's `value`, on every process: a decision all processes of a run
    must share (to stop after the same chunk). A single process needs no message."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.array([value], np.int32))))


def check_same_everywhere(settings: str) -> None:
    """Refuses to start when the processes of a run were given different settings: they would
    wait for each other's collectives for ever."""
    if jax.process_count() == 1:
        return
    import zlib

    from jax.experimental import multihost_utils

    digests = multihost_utils.process_allgather(np.array([zlib.crc32(settings.encode()) & 0x7FFFFFFF], np.int32))
    if len(set(np.asarray(digests).ravel().tolist())) > 1:
        raise ConfigError("the processes of this run were started with different settings; start every "
                          "process with the same flags (all but --process-id)")


def sync(name: str) -> None:
    """Waits for every process of a multi-process run to reach this point."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
