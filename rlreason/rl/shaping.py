"""Reward shaping computed from the rollout itself (see shared ALGORITHMS.md, "Shaping")."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_overlong_penalty(lengths: jax.Array, max_length: int, buffer_length: int) -> jax.Array:
    """DAPO's soft overlong punishment in tokens, [B] from completion lengths [B], with L = max_length and
    C = buffer_length: 0 up to L − C tokens, then ((L − C) − len) / C, falling linearly to −1 at L; −1 beyond L
    (a completion cut at the limit has len = L, so it gets −1 too)."""
    lengths = lengths.astype(jnp.float32)
    penalty = jnp.clip(((max_length - buffer_length) - lengths) / buffer_length, -1.0, 0.0)
    return jnp.where(lengths > max_length, -1.0, penalty)
