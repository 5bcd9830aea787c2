"""Devices: where a run's arrays live, and the 1-D mesh of a data-parallel run.

This is the one place that picks devices and places arrays. One device (the
default) keeps the single-device program jaxlin always had, bit for bit. With
N > 1 devices a 1-D `Mesh` along the axis "batch" holds the run: params,
optimizer state and the uint8 data set are replicated on every device, and the
fused loop constrains each step's batch indices to be sharded along "batch",
so each device gathers its own part of the batch from its own copy of the data
(no host round trip per step) and XLA inserts the gradient all-reduce. The same
pure update runs unchanged (as in JAX's `spmd_mnist_classifier_fromscratch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from jaxlin.config import ConfigError

BATCH_AXIS = "batch"
MODELS_AXIS = "models"  # a sweep's members are sharded along it (see `sweep`)


@dataclasses.dataclass(frozen=True)
class Placement:
    """The devices of a run: one (`mesh` None) or a 1-D mesh over several."""

    devices: tuple[jax.Device, ...]
    mesh: Mesh | None = None
    axis: str = BATCH_AXIS  # the mesh's one axis: a batch's examples, or a sweep's members

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def local_device(self) -> jax.Device:
        """This process's first device of the run: where host-side helpers (the sampler) compute."""
        return next(d for d in self.devices if d.process_index == jax.process_index())

    @property
    def replicated(self):
        if self.mesh is None:
            return SingleDeviceSharding(self.devices[0])
        return NamedSharding(self.mesh, PartitionSpec())

    def batch_sharding(self, axis: int = 0):
        """Sharded along `axis` over the mesh (replicated on a single device)."""
        if self.mesh is None:
            return self.replicated
        return NamedSharding(self.mesh, PartitionSpec(*([None] * axis), self.axis))

    def put(self, tree, sharding=None) -> Any:
        """Arrays (a pytree) on this placement, replicated unless `sharding` says. Across processes
        each process gives the same host value and keeps the parts on its own devices (a device
        array is fetched first: JAX does not move arrays between hosts' device sets)."""
        sharding = sharding or self.replicated
        several_hosts = jax.process_count() > 1

        def put_one(x):
            if several_hosts and isinstance(x, jax.Array) and not x.is_fully_addressable:
                return x if x.sharding == sharding else jax.device_put(x, sharding)
            try:
                return jax.device_put(np.asarray(x) if several_hosts else x, sharding)
            except AssertionError as err:  # JAX compares what the processes pass
                raise ConfigError("the processes of this run hold different values for the same array; "
                                  "start every process with the same settings and data") from err

        return jax.tree.map(put_one, tree)

    def constrain_batch(self, x: jax.Array, axis: int = 0) -> jax.Array:
        """Inside a traced function: lay `x` out sharded along `axis` (a no-op on one device)."""
        if self.mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, self.batch_sharding(axis))

    def describe(self) -> str:
        if self.mesh is None:
            return str(self.devices[0])
        kinds = sorted({d.platform for d in self.devices})
        how = "data parallel" if self.axis == BATCH_AXIS else "members sharded"
        return f"{self.num_devices} {'/'.join(kinds)} devices ({how})"


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


def to_host(tree) -> Any:
    """numpy copies of (global) device arrays, on every process."""

    def fetch(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(fetch, tree)


def platform_devices(kind: str) -> list[jax.Device]:
    """JAX's devices of `kind` ("auto": its default platform)."""
    if kind == "auto":
        return list(jax.devices())
    try:
        return list(jax.devices(kind))
    except RuntimeError as err:
        raise ConfigError(
            f"--device {kind}: JAX sees no {kind.upper()} here ({err}); "
            f"for GPUs install jaxlin[gpu] on a machine with CUDA") from err


def nearest_batch_sizes(batch_size: int, num_devices: int) -> list[int]:
    below = batch_size // num_devices * num_devices
    return [b for b in (below, below + num_devices) if b >= 1]


def resolve_placement(kind: str = "auto", devices: str | int = 1, batch_size: int | None = None,
                      axis: str = BATCH_AXIS) -> Placement:
    """The devices a run uses: `devices` of JAX's `kind` devices ("all": every one), on a mesh along
    `axis`. The batch size, when given, must divide by their number."""
    available = platform_devices(kind)
    if str(devices) == "all":
        count = len(available)
    else:
        count = int(devices)
        if count > len(available):
            raise ConfigError(f"--devices {count}: JAX sees only {len(available)} {available[0].platform} "
                              f"device{'s' if len(available) > 1 else ''} here")
    if batch_size is not None and batch_size % count:
        nearest = " or ".join(str(b) for b in nearest_batch_sizes(batch_size, count))
        raise ConfigError(f"batch size {batch_size} does not divide by {count} devices; "
                          f"the nearest that do: {nearest}")
    if jax.process_count() > 1 and count != len(available):
        raise ConfigError(f"--devices {devices}: a run of {jax.process_count()} processes uses every device "
                          f"of every process ({len(available)}); pass --devices all")
    chosen = tuple(available[:count])
    if count == 1:
        return Placement(chosen)
    return Placement(chosen, Mesh(np.array(chosen), (axis,)), axis)
