"""The per-token GRPO-family loss and its aggregation as (numerator, denominator) pairs.

Aggregation keeps the numerator and the denominator apart: callers sum numerators over micro-batches,
devices and hosts, and divide once by a denominator computed for the whole update batch, so that gradient
accumulation and sharding give exactly the single-batch value. See shared ALGORITHMS.md, "Aggregation".
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

MAX_LOG_RATIO = 20.0


class TokenLoss(NamedTuple):
    """Per-token quantities, all [B, T]."""

    loss: jax.Array  # policy term + beta * kl
    ratio: jax.Array
    kl: jax.Array  # 0 when beta == 0
    low_clipped: jax.Array  # ratio < 1 - epsilon where the advantage is negative (the clip is active)
    high_clipped: jax.Array  # ratio > 1 + epsilon_high where the advantage is positive


def kl_estimate(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi."""
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return jnp.exp(log_ratio) - log_ratio - 1.0  # k3 (DeepSeekMath)


def token_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
               ref_logprobs: jax.Array | None, epsilon: float, epsilon_high: float, beta: float,
               kl_estimator: str) -> TokenLoss:
    """PPO-clipped per-token loss -min(r A, clip(r, 1-eps, 1+eps_high) A) + beta * kl.

    logprobs, old_logprobs, ref_logprobs: [B, T]; advantages: [B] (one value per completion).
    """
    advantages = advantages[:, None]
    log_ratio = jnp.clip(logprobs - old_logprobs, -MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    kl = jnp.zeros_like(loss)
    if beta > 0:
        kl = kl_estimate(logprobs, ref_logprobs, kl_estimator)
        loss = loss + beta * kl
    return TokenLoss(loss, ratio, kl, (ratio < 1.0 - epsilon) & (advantages < 0),
                     (ratio > 1.0 + epsilon_high) & (advantages > 0))


def loss_numerator(token_losses: jax.Array, mask: jax.Array, loss_type: str) -> jax.Array:
    """The summable part of the loss over these rows. token_losses, mask: [B, T]."""
    masked = jnp.sum(token_losses * mask, axis=-1)
    if loss_type == "grpo":
        return jnp.sum(masked / jnp.maximum(jnp.sum(mask, axis=-1), 1.0))
    return jnp.sum(masked)


def loss_denominator(mask: jax.Array, loss_type: str, generation_tokens: jax.Array | float,
                     num_update_batches: int) -> jax.Array:
    """What the numerator of one update batch is divided by. mask: [B, T] of that update batch.

    grpo: rows (mean of per-completion token means). bnpo: tokens of this update batch. dr_grpo:
    rows * max_completion_length. dapo: tokens of the whole generation batch (`generation_tokens`) shared
    evenly by its `num_update_batches` update batches, so the update losses add up to the global token mean.
    """
    rows, max_length = mask.shape
    if loss_type == "grpo":
        return jnp.asarray(rows, jnp.float32)
    if loss_type == "bnpo":
        return jnp.maximum(jnp.sum(mask), 1.0)
    if loss_type == "dr_grpo":
        return jnp.asarray(rows * max_length, jnp.float32)
    return jnp.maximum(generation_tokens / num_update_batches, 1.0)  # dapo
