"""One softmax over the scores of several key sources (used by the XLA forms)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def joint_softmax(scores: Sequence[jax.Array]):
    """Softmax over the concatenation of ``scores`` along their last axis, without concatenating.

    ``scores[s]``: (..., keys_s), masked entries already set to a large negative value.
    Returns the per-source probabilities (same shapes) and ``lse`` (...), the log-sum-exp over
    all sources: ``p_s = exp(scores_s - lse)``.
    """
    m = jax.lax.stop_gradient(
        jnp.max(jnp.stack([jnp.max(s, axis=-1) for s in scores]), axis=0)
    )
    total = sum(jnp.sum(jnp.exp(s - m[..., None]), axis=-1) for s in scores)
    lse = m + jnp.log(total)
    return [jnp.exp(s - lse[..., None]) for s in scores], lse
