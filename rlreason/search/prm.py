"""A process reward model (PRM): the policy's transformer with a scalar head read at each step's last token.

The score of step k is sigmoid(w . final_norm(h) + b), h the hidden state at the step's last token (the model's
own final norm, so the head reads what the LM head reads). It is trained by binary cross-entropy against soft
Monte-Carlo labels (`step_labels`: a label of 0.6 is a target probability, as with Math-Shepherd's soft labels),
averaged over the labelled steps. Arrays cover whole rows, prompt and completion together, [B, L].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlreason.config import ModelConfig
from rlreason.models.transformer import Params, forward_hidden, positions_from_mask, rms_norm


def init_head(cfg: ModelConfig) -> dict:
    """The scalar head {"w": [E], "b": []}, zero: every step scores 0.5 until trained."""
    return {"w": jnp.zeros((cfg.hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def step_logits(params: Params, head: dict, tokens: jax.Array, mask: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The head's logit at every position [B, L] of left-padded rows `tokens`, `mask` [B, L]."""
    mask = mask.astype(bool)
    hidden, _ = forward_hidden(params, tokens, positions_from_mask(mask), mask, cfg)
    normed = rms_norm(hidden, params["final_norm"], cfg).astype(jnp.float32)
    return normed @ head["w"] + head["b"]


def prm_loss(logits: jax.Array, step_end: jax.Array, step_of: jax.Array, soft_labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of the step-end logits [B, L] against `soft_labels` [B, S] of the steps that
    have one (NaN: no label); step_end [B, L] bool and step_of [B, L] (-1 outside every step) as `Steps` gives
    them, laid over the same rows."""
    targets = jnp.take_along_axis(soft_labels, jnp.maximum(step_of, 0), axis=1)
    labelled = step_end & (step_of >= 0) & jnp.isfinite(targets)
    targets = jnp.where(labelled, targets, 0.0)
    cross_entropy = jax.nn.softplus(logits) - targets * logits  # -t log sigmoid(x) - (1 - t) log(1 - sigmoid(x))
    return jnp.sum(jnp.where(labelled, cross_entropy, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)
