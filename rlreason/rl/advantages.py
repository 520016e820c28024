"""Rewards to group-relative advantages (see shared ALGORITHMS.md, "Rewards and advantages").

Rows are laid out group-contiguously: B = P * G, rows [p*G, (p+1)*G) are the G completions of prompt p.
A reward of NaN means "no function could score this completion": such rows are left out of the group
statistics and get advantage 0.
"""

from __future__ import annotations

import jax.numpy as jnp

# Added to the standard deviation before dividing (TRL's value; verl and Tunix use 1e-6).
STD_EPS = 1e-4


def _masked_mean_std(values: jnp.ndarray, valid: jnp.ndarray, axis) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and Bessel-corrected (ddof=1) std of `values` where `valid`; std is 0 with fewer than 2 values."""
    count = jnp.sum(valid, axis=axis, keepdims=True)
    mean = jnp.sum(jnp.where(valid, values, 0.0), axis=axis, keepdims=True) / jnp.maximum(count, 1)
    squares = jnp.sum(jnp.where(valid, (values - mean) ** 2, 0.0), axis=axis, keepdims=True)
    std = jnp.sqrt(squares / jnp.maximum(count - 1, 1))
    return mean, jnp.where(count > 1, std, 0.0)


def group_advantages(rewards: jnp.ndarray, num_generations: int, scale_rewards: str):
    """Group-relative advantages.

    rewards: [B] (NaN = unscored). scale_rewards: "group" (GRPO: divide by the group std), "batch" (by the
    std over the whole batch), "none" (Dr. GRPO: centre only).
    Returns (advantages [B], group_std [P]) where group_std is each group's reward std (0: no signal).
    """
    grouped = rewards.reshape(-1, num_generations)
    valid = ~jnp.isnan(grouped)
    mean, std = _masked_mean_std(grouped, valid, axis=1)
    centred = grouped - mean
    if scale_rewards == "group":
        centred = centred / (std + STD_EPS)
    elif scale_rewards == "batch":
        _, batch_std = _masked_mean_std(grouped, valid, axis=None)
        centred = centred / (batch_std + STD_EPS)
    advantages = jnp.where(valid, centred, 0.0).reshape(-1)
    return advantages, std[:, 0]
