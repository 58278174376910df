"""Data parallelism over all devices of all processes with `jax.sharding`.

A 1-D mesh with axis "data" spans every device (of every process, after
`distributed.initialize`). Batches are split along their leading axis, each process placing only
the rows that fall on its own devices;
parameters and optimizer state are placed by a rule `rule(path, array, mesh) -> PartitionSpec`:
`replicate` (the default) copies them to every device, `shard_largest_axis(min_size)` splits each
big array along its largest axis divisible by the device count (FSDP-style, XLA inserts the gathers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"

Rule = Callable[[tuple, Any, Mesh], PartitionSpec]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the "data" axis, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a pytree of host arrays (batch, ...) on the mesh, the batch split across devices.

    `batch` is the global batch, the same on every process; with several processes each one places
    only its own contiguous block of rows (process i of P: rows i B/P .. (i + 1) B/P - 1, which the
    mesh's device order puts on its devices)."""
    n = mesh.devices.size
    processes, index = jax.process_count(), jax.process_index()

    def put(path, x):
        if x.shape[0] % n:
            raise ValueError(
                f"batch{jax.tree_util.keystr(path)} has shape {tuple(x.shape)}; the leading (batch) "
                f"axis must be divisible by the {n} devices of the mesh"
            )
        if processes == 1:
            return jax.device_put(x, batch_sharding(mesh))
        rows = x.shape[0] // processes
        local = np.asarray(x[index * rows:(index + 1) * rows])
        return jax.make_array_from_process_local_data(batch_sharding(mesh), local, x.shape)

    return jax.tree_util.tree_map_with_path(put, batch)


def replicate(path: tuple, x: Any, mesh: Mesh) -> PartitionSpec:
    """Rule: every array whole on every device."""
    return PartitionSpec()


def shard_largest_axis(min_size: int = 2**16) -> Rule:
    """Rule: split arrays of at least `min_size` elements along their largest axis divisible by the
    device count (ties: the last such axis); smaller or indivisible arrays are replicated."""

    def rule(path: tuple, x: Any, mesh: Mesh) -> PartitionSpec:
        shape = np.shape(x)
        if np.prod(shape, dtype=np.int64) < min_size:
            return PartitionSpec()
        axes = [a for a, d in enumerate(shape) if d % mesh.devices.size == 0]
        if not axes:
            return PartitionSpec()
        axis = max(reversed(axes), key=lambda a: shape[a])
        return PartitionSpec(*[DATA if a == axis else None for a in range(len(shape))])

    return rule


def tree_shardings(tree: Any, mesh: Mesh, rule: Rule | None = None) -> Any:
    """NamedShardings for every leaf of `tree` (e.g. a train state) chosen by `rule`."""
    rule = rule or replicate
    return jax.tree_util.tree_map_with_path(lambda p, x: NamedSharding(mesh, rule(p, x, mesh)), tree)
