"""Reward controls: train on rewards that say nothing about whether the answer is right, to measure how much of a
gain the true reward explains ("Spurious Rewards": random rewards alone lift some models; learning the format is
the other common illusion).

`grpo.reward_control` names one; the step applies it to the combined reward [B] right before the advantages,
while the accuracy metrics keep reading the true per-function scores:
  none         the true reward
  shuffle      the batch's rewards permuted across its scored rows: same values and mean, no link to the completion
  bernoulli    each scored row draws the batch's lowest or highest reward, the highest with probability
               (mean - lowest) / (highest - lowest), so the expected reward is the batch mean; no link either
  format_only  the weighted sum of the run's format rewards alone (FORMAT_REWARDS): what the format is worth

Rows no reward function applies to (NaN) stay NaN under every control.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from rlreason.config import ConfigError
from rlreason.verifiers.combine import combine_rewards
from rlreason.verifiers.lenient import FORMAT_REWARDS

# control(rewards [B], rewards_per_function [B, K], rng) -> rewards [B]
RewardControl = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# builder(reward names [K], reward weights [K]) -> RewardControl
REWARD_CONTROLS: dict[str, Callable[[Sequence[str], jax.Array], RewardControl]] = {}


def reward_control(name: str):
    """Decorator registering a control builder under `name` (a value of `grpo.reward_control`)."""

    def register(builder):
        REWARD_CONTROLS[name] = builder
        return builder

    return register


@reward_control("none")
def true_reward(reward_names: Sequence[str], weights: jax.Array) -> RewardControl:
    return lambda rewards, rewards_per_function, rng: rewards


@reward_control("shuffle")
def shuffled_reward(reward_names: Sequence[str], weights: jax.Array) -> RewardControl:
    def control(rewards, rewards_per_function, rng):
        rows = jnp.arange(rewards.shape[0])
        scored = ~jnp.isnan(rewards)
        # Scored rows first (in row order as targets, in random order as sources), then the NaN rows in row order
        # in both lists, so that NaN rows map onto themselves.
        targets = jnp.argsort(jnp.where(scored, rows, rows + rewards.shape[0]))
        sources = jnp.argsort(jnp.where(scored, jax.random.uniform(rng, rewards.shape), 2.0 + rows))
        return rewards.at[targets].set(rewards[sources])

    return control


@reward_control("bernoulli")
def bernoulli_reward(reward_names: Sequence[str], weights: jax.Array) -> RewardControl:
    def control(rewards, rewards_per_function, rng):
        low, high, mean = jnp.nanmin(rewards), jnp.nanmax(rewards), jnp.nanmean(rewards)
        p_high = jnp.where(high > low, (mean - low) / jnp.where(high > low, high - low, 1.0), 0.0)
        drawn = jnp.where(jax.random.uniform(rng, rewards.shape) < p_high, high, low)
        return jnp.where(jnp.isnan(rewards), jnp.nan, drawn)

    return control


@reward_control("format_only")
def format_only_reward(reward_names: Sequence[str], weights: jax.Array) -> RewardControl:
    is_format = jnp.asarray([name in FORMAT_REWARDS for name in reward_names])
    if not bool(jnp.any(is_format)):
        raise ConfigError(f"config key 'grpo.reward_control' is 'format_only' but grpo.rewards "
                          f"({', '.join(reward_names)}) holds no format reward ({', '.join(FORMAT_REWARDS)}); add one")
    format_weights = jnp.where(is_format, jnp.asarray(weights, jnp.float32), 0.0)
    return lambda rewards, rewards_per_function, rng: combine_rewards(rewards_per_function, format_weights)


def make_reward_control(name: str, reward_names: Sequence[str], weights: jax.Array) -> RewardControl:
    """The control `name` for rewards `reward_names` [K] with `weights` [K]; a ValueError lists the known names."""
    if name not in REWARD_CONTROLS:
        raise ValueError(f"unknown reward control {name!r}; registered: {', '.join(sorted(REWARD_CONTROLS))}")
    return REWARD_CONTROLS[name](reward_names, weights)
