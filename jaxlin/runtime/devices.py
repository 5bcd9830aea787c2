"""Devices: where a run's arrays live, and the 1-D mesh of a data-parallel run or a sweep.

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

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from jaxlin.errors import ConfigError

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
