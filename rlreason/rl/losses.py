"""The GRPO family's per-token losses and their aggregation, as small registries (see shared ALGORITHMS.md).

A token's loss is  w · policy_term(ratio, Â)  +  β · kl  −  α · entropy, where each piece is chosen by name:

  IMPORTANCE_RATIOS  grpo.importance_sampling_level   the ratio π/π_old fed to the policy term
      token            exp(logp − old) per token
      sequence         GSPO: s_i = exp(Σ_t m·(logp − old) / Σ_t m), one value per completion
      sequence_token   GSPO-token: sg(s_i) · exp(logp − sg(logp)), s_i in value, a per-token gradient
  POLICY_LOSSES      grpo.policy_loss
      ppo_clip         −min(r·Â, clip(r, 1−ε, 1+ε_high)·Â), optionally dual-clipped at −c·Â for Â < 0
      cispo            −sg(min(r, ε_high)) · Â · logp (CISPO: ε_high is ε_max, every token keeps a gradient)
      dppo_tv          DPPO: −r·Â, tokens dropped whose probability moved by more than δ (|p − p_old|) in the
                       direction Â pushes it
      dppo_kl          the same with the binary KL(p_old ‖ p) in place of |p − p_old|
  KL_ESTIMATORS      grpo.kl_estimator                k1, k2, k3 estimates of KL(π ‖ π_ref)
  LOSS_AGGREGATIONS  grpo.loss_type                   (numerator, denominator) of grpo, bnpo, dr_grpo, dapo

Aggregation keeps the numerator and the denominator apart: callers sum numerators over micro-batches, devices
and hosts, and divide once by a denominator computed for the whole update batch, so that gradient accumulation
and sharding give exactly the single-batch value.

Adding a variant is one function in its table plus its name in the matching `Literal` of
rlreason.config.GRPOConfig (tests/rl/test_registries.py checks the two agree).

Shapes: B rows, T completion tokens; advantages come in as [B, 1] (a row's, broadcast over its tokens) or [B, T]
(per token: process supervision).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

MAX_LOG_RATIO = 20.0


class LossSettings(NamedTuple):
    """The policy terms' constants (grpo.* knobs)."""

    epsilon: float  # ε_low of the PPO clip
    epsilon_high: float  # ε_high of the PPO clip; CISPO's ε_max
    dual_clip_c: float  # 0: no dual clip; else c > 1
    dppo_delta: float  # DPPO's bound on |p − p_old| (TV) or on the binary KL


def loss_settings(grpo) -> LossSettings:
    """The LossSettings of a GRPOConfig (epsilon_high 0 means epsilon)."""
    return LossSettings(grpo.epsilon, grpo.epsilon_high or grpo.epsilon, grpo.dual_clip_c, grpo.dppo_delta)


class PolicyTerms(NamedTuple):
    """Per-token policy quantities, [B, T] (the clip flags broadcast from [B, 1] at sequence level)."""

    loss: jax.Array
    low_clipped: jax.Array  # bool: the token's update toward lower probability is cut off (Â < 0)
    high_clipped: jax.Array  # bool: the token's update toward higher probability is cut off (Â > 0)


# ---- importance ratios: (logprobs, old_logprobs, mask) [B, T] -> ratio [B, T] or [B, 1] ----------------


def _sequence_log_ratio(logprobs, old_logprobs, mask):
    """Σ_t m·(logp − old) / Σ_t m per row, [B, 1]."""
    return (jnp.sum((logprobs - old_logprobs) * mask, axis=-1, keepdims=True)
            / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0))


def token_ratio(logprobs, old_logprobs, mask):
    return jnp.exp(jnp.clip(logprobs - old_logprobs, -MAX_LOG_RATIO, MAX_LOG_RATIO))


def sequence_ratio(logprobs, old_logprobs, mask):
    return jnp.exp(jnp.clip(_sequence_log_ratio(logprobs, old_logprobs, mask), -MAX_LOG_RATIO, MAX_LOG_RATIO))


def sequence_token_ratio(logprobs, old_logprobs, mask):
    sequence = jax.lax.stop_gradient(sequence_ratio(logprobs, old_logprobs, mask))
    return sequence * jnp.exp(logprobs - jax.lax.stop_gradient(logprobs))


IMPORTANCE_RATIOS: dict[str, Callable] = {
    "token": token_ratio,
    "sequence": sequence_ratio,
    "sequence_token": sequence_token_ratio,
}

# ---- policy terms: (ratio, logprobs, old_logprobs, advantages [B, 1], LossSettings) -> PolicyTerms -------


def ppo_clip(ratio, logprobs, old_logprobs, advantages, settings: LossSettings) -> PolicyTerms:
    clipped = jnp.clip(ratio, 1.0 - settings.epsilon, 1.0 + settings.epsilon_high)
    loss = -jnp.minimum(ratio * advantages, clipped * advantages)
    if settings.dual_clip_c > 0:
        loss = jnp.where(advantages < 0, jnp.minimum(loss, -settings.dual_clip_c * advantages), loss)
    shape = jnp.broadcast_shapes(ratio.shape, logprobs.shape)
    return PolicyTerms(loss, jnp.broadcast_to((ratio < 1.0 - settings.epsilon) & (advantages < 0), shape),
                       jnp.broadcast_to((ratio > 1.0 + settings.epsilon_high) & (advantages > 0), shape))


def cispo(ratio, logprobs, old_logprobs, advantages, settings: LossSettings) -> PolicyTerms:
    weight = jax.lax.stop_gradient(jnp.minimum(ratio, settings.epsilon_high))
    shape = jnp.broadcast_shapes(ratio.shape, logprobs.shape)
    capped = jnp.broadcast_to(ratio > settings.epsilon_high, shape)
    return PolicyTerms(-weight * advantages * logprobs, capped & (advantages < 0), capped & (advantages > 0))


def _dppo(ratio, advantages, moved_up: jax.Array, moved_down: jax.Array) -> PolicyTerms:
    """−r·Â on the tokens that did not move too far the way Â pushes them; `moved_*` say which did."""
    pushed_up, pushed_down = moved_up & (advantages > 0), moved_down & (advantages < 0)
    keep = jax.lax.stop_gradient(~(pushed_up | pushed_down))
    return PolicyTerms(jnp.where(keep, -ratio * advantages, 0.0), pushed_down, pushed_up)


def dppo_tv(ratio, logprobs, old_logprobs, advantages, settings: LossSettings) -> PolicyTerms:
    change = jnp.exp(logprobs) - jnp.exp(old_logprobs)
    return _dppo(ratio, advantages, change > settings.dppo_delta, change < -settings.dppo_delta)


def dppo_kl(ratio, logprobs, old_logprobs, advantages, settings: LossSettings) -> PolicyTerms:
    p, p_old = jnp.exp(logprobs), jnp.exp(old_logprobs)
    tiny = jnp.finfo(p.dtype).tiny
    binary_kl = (p_old * (old_logprobs - logprobs)
                 + (1.0 - p_old) * (jnp.log(jnp.maximum(1.0 - p_old, tiny)) - jnp.log(jnp.maximum(1.0 - p, tiny))))
    too_far = binary_kl > settings.dppo_delta
    return _dppo(ratio, advantages, too_far & (p > p_old), too_far & (p < p_old))


POLICY_LOSSES: dict[str, Callable[..., PolicyTerms]] = {
    "ppo_clip": ppo_clip,
    "cispo": cispo,
    "dppo_tv": dppo_tv,
    "dppo_kl": dppo_kl,
}

# ---- KL estimators: (logprobs, ref_logprobs) [B, T] -> kl [B, T], from tokens sampled from π ----------


def k1(logprobs, ref_logprobs):
    return logprobs - ref_logprobs


def k2(logprobs, ref_logprobs):
    return 0.5 * (logprobs - ref_logprobs) ** 2


def k3(logprobs, ref_logprobs):
    """DeepSeekMath's low-variance, unbiased, non-negative estimator."""
    log_ratio = ref_logprobs - logprobs
    return jnp.exp(log_ratio) - log_ratio - 1.0


KL_ESTIMATORS: dict[str, Callable] = {"k1": k1, "k2": k2, "k3": k3}

# ---- the composed per-token loss ------------------------------------------------------------------------


class TokenLoss(NamedTuple):
    """Per-token quantities, all [B, T]."""

    loss: jax.Array  # is_weight * policy term + beta * kl - entropy_coef * entropy
    ratio: jax.Array
    kl: jax.Array  # 0 when beta == 0
    low_clipped: jax.Array
    high_clipped: jax.Array


def make_token_loss(policy_loss: str, importance_sampling_level: str, kl_estimator: str, settings: LossSettings,
                    beta: float, entropy_coef: float) -> Callable[..., TokenLoss]:
    """The per-token loss of the named variants:

        token_loss(logprobs, entropy, old_logprobs, ref_logprobs, advantages, is_weights, mask) -> TokenLoss

    with advantages [B] (a row's, broadcast over its tokens) or [B, T] (per token: process supervision) and
    every other argument [B, T]; `ref_logprobs` is unused (may be None) when beta == 0, `entropy` when
    entropy_coef == 0. `is_weights` are detached off-policy correction weights (1: none)."""
    ratio_of, policy_term, kl_of = (IMPORTANCE_RATIOS[importance_sampling_level], POLICY_LOSSES[policy_loss],
                                    KL_ESTIMATORS[kl_estimator])

    def token_loss(logprobs, entropy, old_logprobs, ref_logprobs, advantages, is_weights, mask) -> TokenLoss:
        ratio = ratio_of(logprobs, old_logprobs, mask)
        per_token = advantages if advantages.ndim == 2 else advantages[:, None]
        policy = policy_term(ratio, logprobs, old_logprobs, per_token, settings)
        loss = is_weights * policy.loss
        kl = jnp.zeros_like(logprobs)
        if beta > 0:
            kl = kl_of(logprobs, ref_logprobs)
            loss = loss + beta * kl
        if entropy_coef > 0:
            loss = loss - entropy_coef * entropy
        return TokenLoss(loss, jnp.broadcast_to(ratio, logprobs.shape), kl, policy.low_clipped, policy.high_clipped)

    return token_loss


# ---- aggregations: numerator(token_losses, mask) summed over micro-batches; denominator(update_mask,
# generation_tokens, num_updates) once per optimizer update ------------------------------------------------


class Aggregation(NamedTuple):
    numerator: Callable[[jax.Array, jax.Array], jax.Array]
    denominator: Callable[[jax.Array, jax.Array, int], jax.Array]


def _token_sum(token_losses, mask):
    return jnp.sum(token_losses * mask)


def _sequence_means_sum(token_losses, mask):
    return jnp.sum(jnp.sum(token_losses * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0))


def _rows(update_mask, generation_tokens, num_updates):
    return jnp.asarray(update_mask.shape[0], update_mask.dtype)


def _update_tokens(update_mask, generation_tokens, num_updates):
    return jnp.maximum(jnp.sum(update_mask), 1.0)


def _rows_times_max_length(update_mask, generation_tokens, num_updates):
    return jnp.asarray(update_mask.shape[0] * update_mask.shape[1], update_mask.dtype)


def _generation_tokens_per_update(update_mask, generation_tokens, num_updates):
    return jnp.maximum(generation_tokens / num_updates, 1.0)


LOSS_AGGREGATIONS: dict[str, Aggregation] = {
    # DeepSeekMath: mean over completions of each completion's token mean.
    "grpo": Aggregation(_sequence_means_sum, _rows),
    # Token mean over this optimizer update's rows.
    "bnpo": Aggregation(_token_sum, _update_tokens),
    # Dr. GRPO: token sum over rows * max_completion_length (the padded width T).
    "dr_grpo": Aggregation(_token_sum, _rows_times_max_length),
    # DAPO token-level, TRL's definition: the token sum of an update divided by the generation batch's token count
    # shared evenly among the generation batch's `num_updates` = grpo.num_minibatches optimizer updates. With one
    # update that is the global token mean; with M updates each update's loss has the scale of a token mean and
    # the M losses average (they do not add up) to the global token mean.
    "dapo": Aggregation(_token_sum, _generation_tokens_per_update),
}
