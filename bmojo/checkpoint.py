"""Saving and restoring model parameters with their configuration (orbax-checkpoint)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from .config import ModelConfig
from .model import LanguageModel

_CONFIG = "config.json"
_PARAMS = "params"
_SHOWN = 6  # mismatching arrays listed in an error message


def save(directory: str, params, config: ModelConfig) -> None:
    """Write ``params`` (the variables of ``LanguageModel(config)``) and ``config`` to ``directory``."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, _PARAMS), params, force=True)
    with open(os.path.join(directory, _CONFIG), "w") as f:
        json.dump(config.to_dict(), f, indent=1)


def restore(directory: str):
    """Read what ``save`` wrote; returns (params, config).

    ValueError naming the file if config.json is not a valid configuration, and naming the directory
    and the arrays whose saved shapes differ from what config.json gives (e.g. config.json edited
    after the save), checked before orbax reads any array.
    """
    directory = os.path.abspath(directory)
    config_path = os.path.join(directory, _CONFIG)
    with open(config_path) as f:
        try:
            config = ModelConfig.from_dict(json.load(f))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{config_path} does not hold a valid ModelConfig: {e}") from None
    abstract = jax.eval_shape(LanguageModel(config).init, jax.random.key(0),
                              jnp.zeros((1, 1), jnp.int32))
    path = os.path.join(directory, _PARAMS)
    context = f"the parameters in {directory} do not fit the configuration in {_CONFIG}"
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.metadata(path)
        check_restorable(saved, abstract, context)
        try:
            params = checkpointer.restore(path, abstract)
        except ValueError as e:  # orbax refuses another tree structure
            reshaped, unmatched = mismatches(saved, abstract)
            raise ValueError(f"{context}: {_listing(reshaped + unmatched) or e}") from None
    return params, config


def mismatches(saved: Any, abstract: Any) -> tuple[list[str], list[str]]:
    """Where the pytree `abstract` (arrays or ShapeDtypeStructs) differs from a checkpoint whose orbax
    metadata is `saved` (a StepMetadata, TreeMetadata or tree of ArrayMetadata): (one line per array of
    another shape, "a/b: saved (2, 3), expected (3, 3)"; one line per array on one side only)."""
    saved = getattr(saved, "item_metadata", saved)
    have, want = _shapes(getattr(saved, "tree", saved)), _shapes(abstract)
    reshaped = [f"{k}: saved {have[k]}, expected {want[k]}" for k in want if k in have and have[k] != want[k]]
    unmatched = ([f"{k}: expected {want[k]}, not in the checkpoint" for k in want if k not in have]
                 + [f"{k}: saved {have[k]}, not expected" for k in have if k not in want])
    return reshaped, unmatched


def check_restorable(saved: Any, abstract: Any, context: str) -> None:
    """ValueError "`context`: <array>: saved <shape>, expected <shape>; ..." if an array of `abstract`
    has another shape than in the checkpoint whose metadata is `saved` (see `mismatches`).

    Orbax restores arrays concurrently; a shape mismatch makes it print one traceback per array
    still in flight, so this check runs first. Arrays present on one side only are left to orbax,
    which refuses another tree structure before reading anything (and may spell paths differently).
    """
    reshaped, _ = mismatches(saved, abstract)
    if reshaped:
        raise ValueError(f"{context}: {_listing(reshaped)}")


def _listing(lines: list[str]) -> str:
    more = f"; and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
    return "; ".join(lines[:_SHOWN]) + more


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"a/b/0/c": shape} for every leaf with a shape (paths spelled by dict key, attribute or index)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
            for path, leaf in leaves if hasattr(leaf, "shape")}


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)
