"""Saving and restoring model parameters with their configuration (orbax-checkpoint)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from .config import ModelConfig
from .model import LanguageModel

_CONFIG = "config.json"
_PARAMS = "params"


def save(directory: str, params, config: ModelConfig) -> None:
    """Write ``params`` (the variables of ``LanguageModel(config)``) and ``config`` to ``directory``."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, _PARAMS), params, force=True)
    with open(os.path.join(directory, _CONFIG), "w") as f:
        json.dump(config.to_dict(), f, indent=1)


def restore(directory: str):
    """Read what ``save`` wrote; returns (params, config)."""
    directory = os.path.abspath(directory)
    with open(os.path.join(directory, _CONFIG)) as f:
        config = ModelConfig.from_dict(json.load(f))
    abstract = jax.eval_shape(LanguageModel(config).init, jax.random.key(0),
                              jnp.zeros((1, 1), jnp.int32))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(directory, _PARAMS), abstract)
    return params, config
