"""Combining per-function rewards: the weighted sum the advantages use, and per-function metrics (pure jnp)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def combine_rewards(per_function: jax.Array, weights: Sequence[float] | jax.Array) -> jax.Array:
    """Σ_k w_k · r_k over the functions that apply to each row. per_function: [B, K] float32 with NaN for "not
    applicable"; weights: [K]. Returns [B] float32, NaN for a row that no function applies to (its advantage
    must then be 0)."""
    applicable = ~jnp.isnan(per_function)
    total = jnp.sum(jnp.where(applicable, per_function * jnp.asarray(weights, per_function.dtype), 0.0), axis=-1)
    return jnp.where(jnp.any(applicable, axis=-1), total, jnp.nan)


def reward_metrics(per_function: jax.Array, names: Sequence[str]) -> dict[str, jax.Array]:
    """`rewards/<name>`: each function's mean over the rows it applies to (NaN if none). per_function: [B, K]."""
    applicable = ~jnp.isnan(per_function)
    sums = jnp.sum(jnp.where(applicable, per_function, 0.0), axis=0)
    counts = jnp.sum(applicable, axis=0)
    means = jnp.where(counts > 0, sums / jnp.maximum(counts, 1), jnp.nan)
    return {f"rewards/{name}": means[k] for k, name in enumerate(names)}
