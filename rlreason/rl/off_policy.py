"""Correcting for a sampler whose log-probs differ from the trainer's (see shared ALGORITHMS.md, "Ratios" and
"Masked importance sampling").

The sampler's log-probs `sampler` and the trainer's recomputed log-probs of the same policy `trainer` differ
when sampling runs in another precision (grpo.rollout_dtype), on another engine, or on stale weights. With
grpo.recompute_old_logprobs the trainer's become π_old, and a correction from OFF_POLICY_CORRECTIONS
(grpo.off_policy_correction) re-weights or drops tokens by ρ = exp(trainer − sampler):

    none               weight 1
    token_truncate     TIS: weight min(ρ_t, C) per token, detached
    sequence_truncate  TIS: weight min(Π_t ρ_t, C) = min(exp(Σ_t m·log ρ_t), C) per completion
    token_mask         MIS: drop tokens with ρ_t outside [low, high]
    sequence_mask      MIS: drop completions whose geometric mean exp(Σ_t m·log ρ_t / Σ_t m) is outside [low, high]

Each correction: (trainer [B, T], sampler [B, T], mask [B, T], OffPolicySettings) -> (weight, keep) [B, T].
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rlreason.rl.losses import MAX_LOG_RATIO


class OffPolicySettings(NamedTuple):
    cap: float  # C of truncated importance sampling
    mask_low: float
    mask_high: float


def _log_rho(trainer, sampler):
    return jnp.clip(trainer - sampler, -MAX_LOG_RATIO, MAX_LOG_RATIO)


def _sequence_log_rho_sum(trainer, sampler, mask):
    return jnp.sum(_log_rho(trainer, sampler) * mask, axis=-1, keepdims=True)


def no_correction(trainer, sampler, mask, settings):
    return jnp.ones_like(trainer), jnp.ones_like(trainer)


def token_truncate(trainer, sampler, mask, settings):
    return jnp.minimum(jnp.exp(_log_rho(trainer, sampler)), settings.cap), jnp.ones_like(trainer)


def sequence_truncate(trainer, sampler, mask, settings):
    weight = jnp.minimum(jnp.exp(jnp.clip(_sequence_log_rho_sum(trainer, sampler, mask), -MAX_LOG_RATIO,
                                          MAX_LOG_RATIO)), settings.cap)
    return jnp.broadcast_to(weight, trainer.shape), jnp.ones_like(trainer)


def _in_band(rho, settings):
    return ((rho >= settings.mask_low) & (rho <= settings.mask_high)).astype(jnp.float32)


def token_mask(trainer, sampler, mask, settings):
    return jnp.ones_like(trainer), _in_band(jnp.exp(_log_rho(trainer, sampler)), settings)


def sequence_mask(trainer, sampler, mask, settings):
    geometric_mean = jnp.exp(_sequence_log_rho_sum(trainer, sampler, mask)
                             / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0))
    return jnp.ones_like(trainer), jnp.broadcast_to(_in_band(geometric_mean, settings), trainer.shape)


OFF_POLICY_CORRECTIONS: dict[str, Callable] = {
    "none": no_correction,
    "token_truncate": token_truncate,
    "sequence_truncate": sequence_truncate,
    "token_mask": token_mask,
    "sequence_mask": sequence_mask,
}


def mismatch_metrics(trainer: jax.Array, sampler: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """How far the sampler's log-probs are from the trainer's, over the masked tokens. [B, T] each.

    token_prob_error is NeMo-RL's token_mult_prob_error, mean |p_sampler / p_trainer − 1|: above 0.01-0.02 it
    points to a sampler/trainer bug rather than numerical noise."""
    tokens = jnp.maximum(jnp.sum(mask), 1.0)
    difference = jnp.abs(sampler - trainer)
    return {
        "mismatch/logprob_diff_mean": jnp.sum(difference * mask) / tokens,
        "mismatch/logprob_diff_max": jnp.max(jnp.where(mask > 0, difference, 0.0)),
        "mismatch/token_prob_error": jnp.sum(jnp.abs(jnp.exp(sampler - trainer) - 1.0) * mask) / tokens,
    }
