"""Per-token log-probabilities of given tokens: one definition shared by the sampler and the GRPO loss.

Log-probabilities are taken under the tempered distribution softmax(logits / temperature), without
top-k / top-p truncation, so that what the sampler reports equals what a full forward pass recomputes
(temperature 0, greedy, counts as temperature 1 here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlreason.config import ModelConfig
from rlreason.models.transformer import Params, forward_hidden, positions_from_mask, unembed


def scale_logits(logits: jax.Array, temperature: float) -> jax.Array:
    return logits / temperature if temperature > 0 else logits


def logprobs_of(logits: jax.Array, tokens: jax.Array, temperature: float) -> jax.Array:
    """log softmax(logits / temperature) at `tokens`. logits: [..., V] float32; tokens: [...] int."""
    log_probs = jax.nn.log_softmax(scale_logits(logits, temperature), axis=-1)
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


def entropy_of(logits: jax.Array, temperature: float) -> jax.Array:
    """Entropy of softmax(logits / temperature) over the last axis."""
    log_probs = jax.nn.log_softmax(scale_logits(logits, temperature), axis=-1)
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def completion_logprobs(params: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                        completion_tokens: jax.Array, cfg: ModelConfig, temperature: float,
                        with_entropy: bool = False):
    """Log-probs of completion tokens after their (left-padded) prompts, by one full forward pass.

    prompt_tokens, prompt_mask: [B, Tp]; completion_tokens: [B, Tc].
    Returns logprobs [B, Tc] float32 (and entropies [B, Tc] if `with_entropy`). Completion slots after a stop
    token hold padding; they are attended by nothing that counts and are masked by the caller.
    """
    tokens = jnp.concatenate([prompt_tokens, completion_tokens], axis=1)
    key_valid = jnp.concatenate([prompt_mask.astype(bool), jnp.ones(completion_tokens.shape, bool)], axis=1)
    positions = positions_from_mask(key_valid)
    # Only the logits that predict completion tokens are needed: the last prompt slot and all but the last
    # completion slot.
    prompt_length = prompt_tokens.shape[1]
    hidden, _ = forward_hidden(params, tokens[:, :-1], positions[:, :-1], key_valid[:, :-1], cfg)
    logits = unembed(params, hidden[:, prompt_length - 1:], cfg)
    logprobs = logprobs_of(logits, completion_tokens, temperature)
    if with_entropy:
        return logprobs, entropy_of(logits, temperature)
    return logprobs
