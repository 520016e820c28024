"""Rewards to advantages (see shared ALGORITHMS.md, "Rewards and advantages"), as two small registries:

  ADVANTAGE_ESTIMATORS  grpo.advantage_estimator   the centred reward of each completion
      grpo    r_i − mean of the group
      rloo    r_i − mean of the other completions of the group (= n/(n−1) · (r_i − mean), n scored members)
  REWARD_SCALES         grpo.scale_rewards          what the centred rewards are divided by
      group   the group's reward std + STD_EPS (GRPO, DeepSeekMath)
      batch   the std of every scored reward of the batch + STD_EPS
      none    nothing (Dr. GRPO)

Rows are laid out group-contiguously: B = P * G, rows [p*G, (p+1)*G) are the G completions of prompt p.
A reward of NaN means "no function could score this completion": such rows are left out of the group
statistics and get advantage 0. Stds are Bessel-corrected (ddof = 1) and 0 with fewer than two values.

Equal rewards give exactly zero: every spread is computed after subtracting one member of the set (the first
scored one), so equal values become exact zeros before any mean is taken, and x − mean(x) is exactly 0 (a
plain float32 mean of eight 0.2s is not 0.2, and dividing the residue by a ~1e-8 std gave random-sign
advantages up to 1e-4).

With `per_function` (GDPO-style), each reward function's column is centred and scaled on its own and the
advantage is the weighted sum of those, so that a dense reward does not drown a sparse one.

`process_advantages` turns a PRM's step rewards into per-token advantages (process supervision), added to the
outcome advantage by the step when grpo.process_reward names a PRM.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

# Added to the standard deviation before dividing (TRL's value; verl and Tunix use 1e-6).
STD_EPS = 1e-4
# A group std at or below this counts as "all rewards equal" (torch.isclose(std, 0)'s default atol, as in TRL).
ZERO_STD_ATOL = 1e-8


def _offsets(values: jax.Array, valid: jax.Array, axis) -> jax.Array:
    """values minus the first valid value along `axis` (all axes when None), 0 where not valid."""
    flat = values if axis is not None else values.reshape(1, -1)
    flat_valid = valid if axis is not None else valid.reshape(1, -1)
    first = jnp.take_along_axis(flat, jnp.argmax(flat_valid, axis=-1, keepdims=True), axis=-1)
    return jnp.where(flat_valid, flat - first, 0.0).reshape(values.shape)


def centred_and_std(values: jax.Array, valid: jax.Array, axis) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(values − mean, Bessel std, count of valid values) over `axis` (None: all), exact for equal values.

    Means and stds keep the reduced axis (keepdims). Centred values are 0 where not valid."""
    offsets = _offsets(values, valid, axis)
    count = jnp.sum(valid, axis=axis, keepdims=True)
    centred = jnp.where(valid, offsets - jnp.sum(offsets, axis=axis, keepdims=True) / jnp.maximum(count, 1), 0.0)
    std = jnp.sqrt(jnp.sum(centred**2, axis=axis, keepdims=True) / jnp.maximum(count - 1, 1))
    return centred, jnp.where(count > 1, std, 0.0), count


# ---- estimators: (rewards [P, G], valid [P, G]) -> centred advantages [P, G], 0 where not valid ----------


def group_mean_baseline(rewards, valid):
    return centred_and_std(rewards, valid, axis=1)[0]


def leave_one_out_baseline(rewards, valid):
    centred, _, count = centred_and_std(rewards, valid, axis=1)
    return centred * (count / jnp.maximum(count - 1, 1))


ADVANTAGE_ESTIMATORS: dict[str, Callable] = {
    "grpo": group_mean_baseline,
    "rloo": leave_one_out_baseline,
}

# ---- scales: (rewards [P, G], valid [P, G]) -> divisor, broadcastable to [P, G] -------------------------


def group_scale(rewards, valid):
    return centred_and_std(rewards, valid, axis=1)[1] + STD_EPS


def batch_scale(rewards, valid):
    return centred_and_std(rewards, valid, axis=None)[1] + STD_EPS


def no_scale(rewards, valid):
    return jnp.ones((), rewards.dtype)


REWARD_SCALES: dict[str, Callable] = {"group": group_scale, "batch": batch_scale, "none": no_scale}


class Advantages(NamedTuple):
    advantages: jax.Array  # [B]
    group_std: jax.Array  # [P] std of each group's (weighted-sum) rewards
    zero_std: jax.Array  # [P] bool: the group's rewards are all equal (or fewer than two were scored)


def group_advantages(rewards: jax.Array, num_generations: int, estimator: str = "grpo",
                     scale_rewards: str = "group") -> jax.Array:
    """Advantages [B] of rewards [B] (NaN = unscored) by the named estimator and scale."""
    grouped = rewards.reshape(-1, num_generations)
    valid = ~jnp.isnan(grouped)
    safe = jnp.where(valid, grouped, 0.0)
    advantages = ADVANTAGE_ESTIMATORS[estimator](safe, valid) / REWARD_SCALES[scale_rewards](safe, valid)
    return jnp.where(valid, advantages, 0.0).reshape(-1)


def compute_advantages(rewards: jax.Array, rewards_per_function: jax.Array, weights: jax.Array,
                       num_generations: int, estimator: str, scale_rewards: str, per_function: bool) -> Advantages:
    """rewards [B] (the weighted sum, NaN = unscored); rewards_per_function [B, K]; weights [K].

    per_function False: the advantage of the summed reward. True: Σ_k w_k · advantage of function k's column
    (a function that does not apply to a row adds 0 there); a row no function scored still gets 0.
    """
    if per_function:
        columns = jax.vmap(lambda column: group_advantages(column, num_generations, estimator, scale_rewards),
                           in_axes=1, out_axes=1)(rewards_per_function)
        advantages = jnp.where(jnp.isnan(rewards), 0.0, jnp.sum(columns * weights, axis=1))
    else:
        advantages = group_advantages(rewards, num_generations, estimator, scale_rewards)
    grouped = rewards.reshape(-1, num_generations)
    _, std, _ = centred_and_std(jnp.where(jnp.isnan(grouped), 0.0, grouped), ~jnp.isnan(grouped), axis=1)
    return Advantages(advantages, std[:, 0], std[:, 0] <= ZERO_STD_ATOL)


def process_advantages(step_rewards: jax.Array, step_ends: jax.Array, num_generations: int) -> jax.Array:
    """Process supervision's per-token advantages (DeepSeekMath, section 4.1.3): every step reward of a group is
    normalised by the mean and std of all the group's step rewards, r~ = (r - mean) / (std + STD_EPS), and token
    t's advantage is the sum of r~ over the steps that end at or after t.

    step_rewards [B, T] (read where step_ends [B, T] is True, the last token of each step), rows
    group-contiguous. Returns [B, T]; a token after a completion's last step end gets 0.
    """
    batch, length = step_rewards.shape
    grouped = step_rewards.reshape(-1, num_generations * length)
    valid = step_ends.reshape(grouped.shape)
    centred, std, _ = centred_and_std(grouped, valid, axis=1)
    normalised = (centred / (std + STD_EPS)).reshape(batch, length)
    return jnp.flip(jnp.cumsum(jnp.flip(normalised, axis=1), axis=1), axis=1)
