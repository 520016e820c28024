"""Per-token log-probabilities of given tokens: one definition shared by the sampler and the GRPO loss.

Log-probabilities are taken under the tempered distribution softmax(logits / temperature), without
top-k / top-p truncation, so that what the sampler reports equals what a full forward pass recomputes
(temperature 0, greedy, counts as temperature 1 here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rlreason.config import ModelConfig
from rlreason.models.transformer import Params, forward_hidden, positions_from_mask, prefill_for_rows, unembed


def scale_logits(logits: jax.Array, temperature: float) -> jax.Array:
    return logits / temperature if temperature > 0 else logits


def logprobs_of(logits: jax.Array, tokens: jax.Array, temperature: float) -> jax.Array:
    """log softmax(logits / temperature) at `tokens`. logits: [..., V] float32; tokens: [...] int."""
    scaled = scale_logits(logits, temperature)
    chosen = jnp.take_along_axis(scaled, tokens[..., None], axis=-1)[..., 0]
    return chosen - jax.nn.logsumexp(scaled, axis=-1)


def entropy_of(logits: jax.Array, temperature: float) -> jax.Array:
    """Entropy of softmax(logits / temperature) over the last axis."""
    log_probs = jax.nn.log_softmax(scale_logits(logits, temperature), axis=-1)
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def per_position(function: Callable, chunk: int, *inputs: jax.Array) -> Any:
    """function(*inputs), where each input leads with [B, C] positions and function maps positions to a tree of
    per-position results [B, C] independently of one another (e.g. a token's log-prob from its hidden state).

    With 0 < `chunk` < C it runs over chunks of `chunk` positions, one chunk's intermediates alive at a time: the
    scan body is rematerialised, so the backward pass recomputes a chunk's [B, chunk, V] logits instead of
    keeping [B, C, V] of them."""
    rows, length = inputs[0].shape[:2]
    if not 0 < chunk < length:
        return function(*inputs)
    padded = -(-length // chunk) * chunk

    def by_chunk(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, padded - length)) + ((0, 0),) * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(rows, padded // chunk, chunk, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def one_chunk(_, chunk_inputs):
        return None, function(*chunk_inputs)

    _, results = jax.lax.scan(one_chunk, None, tuple(by_chunk(x) for x in inputs))
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(rows, padded)[:, :length], results)


def hidden_token_stats(params: Params, hidden: jax.Array, tokens: jax.Array, cfg: ModelConfig, temperature: float,
                       with_entropy: bool = False):
    """(log-probs, entropies or None) [B, C] of `tokens` [B, C], each predicted by the hidden state [B, C, E]
    before it; with `cfg.logprob_chunk_size` > 0 the [B, C, V] logits never exist at once (`per_position`)."""
    def token_stats(hidden: jax.Array, tokens: jax.Array):
        logits = unembed(params, hidden, cfg)
        return logprobs_of(logits, tokens, temperature), (entropy_of(logits, temperature) if with_entropy else None)

    return per_position(token_stats, cfg.logprob_chunk_size, hidden, tokens)


def completion_hidden(params: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                      completion_tokens: jax.Array, cfg: ModelConfig, rows_per_prompt: int = 1) -> jax.Array:
    """The hidden states [B, Tc, E] that predict each completion token after its (left-padded) prompt, by one
    forward pass. prompt_tokens, prompt_mask: [B, Tp]; completion_tokens: [B, Tc]. Completion slots after a stop
    token hold padding; they are attended by nothing that counts and are masked by the caller.

    `rows_per_prompt` > 1 says that each run of that many consecutive rows shares one prompt (a GRPO group, or
    its share of a micro-batch): the prompt is then run once, and its keys and values serve all of its rows, as
    the sampler's prefill does. The result is the same; the prompt's forward and backward work shrink by that
    factor, which pays where prompts are long next to the completions.
    """
    if rows_per_prompt > 1:
        # Each run's first row, taken by a reshape (rows sharded in whole runs stay where they are).
        first = lambda rows: rows.reshape(-1, rows_per_prompt, *rows.shape[1:])[:, 0]  # noqa: E731
        return _shared_prompt_hidden(params, first(prompt_tokens), first(prompt_mask), completion_tokens, cfg,
                                     rows_per_prompt)
    tokens = jnp.concatenate([prompt_tokens, completion_tokens], axis=1)
    key_valid = jnp.concatenate([prompt_mask.astype(bool), jnp.ones(completion_tokens.shape, bool)], axis=1)
    positions = positions_from_mask(key_valid)
    # Only the hidden states that predict completion tokens are needed: the last prompt slot and all but the
    # last completion slot.
    hidden, _ = forward_hidden(params, tokens[:, :-1], positions[:, :-1], key_valid[:, :-1], cfg)
    return hidden[:, prompt_tokens.shape[1] - 1:]


def _shared_prompt_hidden(params: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                          completion_tokens: jax.Array, cfg: ModelConfig, rows_per_prompt: int) -> jax.Array:
    """completion_hidden with each of P prompts [P, Tp] run once for its `rows_per_prompt` consecutive rows of
    completion_tokens [P * rows_per_prompt, Tc]: a prefill writes the prompts' keys and values into a cache, the
    completions attend to it (gradients flow back through it to the prompts), and the hidden state of each
    prompt's last slot predicts its rows' first completion token."""
    prompt_length = prompt_tokens.shape[1]
    length = completion_tokens.shape[1] - 1  # the last completion token predicts nothing that is scored
    prompt_valid = prompt_mask.astype(bool)
    prompt_hidden, cache = prefill_for_rows(params, prompt_tokens, prompt_valid, cfg, prompt_length + length,
                                            rows_per_prompt)
    per_row = lambda x: jnp.repeat(x, rows_per_prompt, axis=0)  # noqa: E731
    if length == 0:
        return per_row(prompt_hidden[:, -1:])
    key_valid = jnp.concatenate([per_row(prompt_valid), jnp.ones((cache.keys.shape[1], length), bool)], axis=1)
    positions = per_row(jnp.sum(prompt_valid, axis=1, dtype=jnp.int32))[:, None] + jnp.arange(length)
    hidden, _ = forward_hidden(params, completion_tokens[:, :-1], positions, key_valid, cfg, cache, prompt_length)
    return jnp.concatenate([per_row(prompt_hidden[:, -1:]), hidden], axis=1)


def completion_logprobs(params: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                        completion_tokens: jax.Array, cfg: ModelConfig, temperature: float,
                        with_entropy: bool = False, rows_per_prompt: int = 1):
    """Log-probs of completion tokens after their prompts (arguments as `completion_hidden`).

    Returns logprobs [B, Tc] float32 (and entropies [B, Tc] if `with_entropy`). With `cfg.logprob_chunk_size`
    > 0 the [B, Tc, V] logits never exist at once (see `per_position`).
    """
    hidden = completion_hidden(params, prompt_tokens, prompt_mask, completion_tokens, cfg, rows_per_prompt)
    logprobs, entropy = hidden_token_stats(params, hidden, completion_tokens, cfg, temperature, with_entropy)
    return (logprobs, entropy) if with_entropy else logprobs
