"""Orbax checkpoints of a train state, saved every N steps, restored to resume an interrupted run.

Each checkpoint holds two items: "state" (the whole train state: step, params, optimizer state and the
RNG key) and "meta" (JSON: the step and the data position, i.e. how many batches were consumed).
Training data in this harness is a pure function of the step (`batches(step)`), so restoring the step
restores the data iterator too, and a resumed run produces the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save every `every` steps (0 disables periodic saves) into `directory`, keeping `keep` of them."""

    def __init__(self, directory: str | pathlib.Path, every: int, keep: int = 2):
        if every < 0:
            raise ValueError(f"checkpoint interval must be >= 0; got {every}")
        self.every = every
        self._manager = ocp.CheckpointManager(
            pathlib.Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, like: Any) -> tuple[Any, dict]:
        """Restore the latest checkpoint into the structure, shapes, dtypes and shardings of `like`."""
        step = self._manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self._manager.directory}")
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def maybe_save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
        """Save (asynchronously) if `step` is a multiple of the interval, or if `force`."""
        if not force and (self.every == 0 or step % self.every):
            return False
        if self._manager.latest_step() == step:
            return False
        return self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
