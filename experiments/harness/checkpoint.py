"""Orbax checkpoints of a train state, saved every N steps, restored to resume an interrupted run.

Each checkpoint holds two items: "state" (the whole train state: step, params, optimizer state and the
RNG key) and "meta" (JSON: the step and the data position, i.e. how many batches were consumed).
Training data in this harness is a pure function of the step (`batches(step)`), so restoring the step
restores the data iterator too, and a resumed run produces the same parameters as an uninterrupted one.

Saves are asynchronous. A step counts as saved only once its checkpoint is finalized (orbax writes
into `N.orbax-checkpoint-tmp...` and renames it to `N` when complete): `latest_step` and `restore`
see finalized checkpoints only, and the temporary folders a kill leaves behind are deleted when the
next Checkpointer opens the directory (listed in `discarded`).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from bmojo.checkpoint import check_restorable


class Checkpointer:
    """Save every `every` steps (0 disables periodic saves) into `directory`, keeping `keep` of them."""

    def __init__(self, directory: str | pathlib.Path, every: int, keep: int = 2):
        if every < 0:
            raise ValueError(f"checkpoint interval every (fit's checkpoint_every) = {every}; expected >= 0")
        self.every = every
        directory = pathlib.Path(directory).absolute()
        self.discarded: list[str] = sorted(ocp.step.tmp_checkpoints(directory)) if directory.is_dir() else []
        """Incomplete checkpoints (temporary folders of interrupted saves) found and deleted on opening."""
        self._manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    @property
    def directory(self) -> pathlib.Path:
        return pathlib.Path(self._manager.directory)

    def latest_step(self) -> int | None:
        """The last step whose checkpoint is completely written, or None."""
        return self._manager.latest_step()

    def restore(self, like: Any) -> tuple[Any, dict]:
        """Restore the latest complete checkpoint into the structure, shapes, dtypes and shardings of
        `like`; ValueError naming the directory and the arrays if their saved shapes differ."""
        step = self._manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
        )
        check_restorable(self._manager.item_metadata(step)["state"], abstract,
                         f"the train state saved in {self.directory / str(step)} does not fit this run")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def due(self, step: int) -> bool:
        """Whether `step` is a multiple of the save interval."""
        return self.every > 0 and step % self.every == 0

    def maybe_save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
        """Save (asynchronously) if `step` is a multiple of the interval, or if `force`."""
        if not (force or self.due(step)):
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
