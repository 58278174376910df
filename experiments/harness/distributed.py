"""Several processes (hosts) on JAX's own multi-process runtime.

Launch the same command on every process with

    JAX_COORDINATOR_ADDRESS=host:port   the address of process 0 (read by jax itself)
    JAX_NUM_PROCESSES=N                 how many processes
    JAX_PROCESS_ID=i                    this process, 0 .. N - 1

or, where jax finds these by itself (Cloud TPU pod slices, SLURM, Open MPI), with
``JAX_DISTRIBUTED=1``. `initialize` then joins the runtime before any device is used: the mesh of
`sharding.make_mesh` spans every process's devices, each process places only its own rows of a batch
(`sharding.shard_batch`), orbax checkpoints are written and read by all processes together, and only
process 0 writes the results folder. On CPU, collectives across processes need
``jax.config.update("jax_cpu_collectives_implementation", "gloo")`` before `initialize`.
"""

from __future__ import annotations

import os

import jax


def initialize() -> bool:
    """Join JAX's multi-process runtime if the environment asks for it (see the module docstring);
    returns whether it did. ValueError naming the variable for a malformed or partial setting."""
    if jax.distributed.is_initialized():
        return True
    names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    given = {name: os.environ[name] for name in names if os.environ.get(name)}
    if os.environ.get("JAX_DISTRIBUTED") == "1" and not given:
        jax.distributed.initialize()  # the cluster is detected by jax
        return True
    if not given:
        return False
    if len(given) < len(names):
        missing = [n for n in names if n not in given]
        raise ValueError(f"multi-process run: {', '.join(given)} set but {', '.join(missing)} missing; "
                         "expected all three (or JAX_DISTRIBUTED=1 on a cluster jax detects)")
    numbers = {}
    for name in names[1:]:
        try:
            numbers[name] = int(given[name])
        except ValueError:
            raise ValueError(f"{name}={given[name]!r}: expected an integer") from None
    count, index = numbers["JAX_NUM_PROCESSES"], numbers["JAX_PROCESS_ID"]
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"JAX_NUM_PROCESSES={count}, JAX_PROCESS_ID={index}: expected 0 <= id < count")
    jax.distributed.initialize(given["JAX_COORDINATOR_ADDRESS"], num_processes=count, process_id=index)
    return True
