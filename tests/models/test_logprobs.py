"""Completion log-probs and entropies, whole or in chunks of positions (`model.logprob_chunk_size`), and with a
prompt's forward pass shared by its rows.

Chunking changes only which positions' logits exist at once: per-token values are the same operations on the
same inputs, and the gradient sums the same per-token terms grouped by chunk, so both agree with the
whole-completion computation to float32 rounding of a sum over the B * Tc tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.config import ModelConfig
from rlreason.models.logprobs import completion_logprobs, entropy_of, logprobs_of
from rlreason.models.transformer import init_params

TINY = ModelConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                   intermediate_size=64)
ROWS, PROMPT, COMPLETION = 3, 5, 11
UNIT_ROUNDOFF = 2.0**-24


def inputs(cfg: ModelConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompt = jnp.asarray(rng.integers(1, cfg.vocab_size, (ROWS, PROMPT)), jnp.int32)
    prompt_mask = jnp.asarray(np.arange(PROMPT)[None, :] >= np.array([[0], [2], [4]]), jnp.int32)  # left-padded
    completion = jnp.asarray(rng.integers(1, cfg.vocab_size, (ROWS, COMPLETION)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(ROWS, COMPLETION)), jnp.float32)
    return prompt, prompt_mask, completion, weights


def test_log_probs_and_entropy_follow_their_formulas():
    """float64 numpy from the definitions: log p_i = z_i/T - log sum_j exp(z_j/T); H = -sum p log p."""
    logits = np.random.default_rng(3).normal(size=(4, 50)) * 5
    tokens = np.array([0, 7, 49, 21])
    for temperature in (1.0, 0.7):
        scaled = logits / temperature
        log_p = scaled - np.log(np.sum(np.exp(scaled - scaled.max(-1, keepdims=True)), -1, keepdims=True)) \
            - scaled.max(-1, keepdims=True)
        np.testing.assert_allclose(logprobs_of(jnp.asarray(logits, jnp.float32), jnp.asarray(tokens), temperature),
                                   log_p[np.arange(4), tokens], atol=1e-5)
        np.testing.assert_allclose(entropy_of(jnp.asarray(logits, jnp.float32), temperature),
                                   -np.sum(np.exp(log_p) * log_p, -1), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 5])
def test_chunks_give_the_whole_completions_values_and_gradients(chunk):
    params = init_params(TINY, jax.random.key(0))
    prompt, prompt_mask, completion, weights = inputs(TINY)

    def objective(params, cfg):
        logprobs, entropy = completion_logprobs(params, prompt, prompt_mask, completion, cfg, 0.9, with_entropy=True)
        return jnp.sum(weights * logprobs) + jnp.sum(entropy), (logprobs, entropy)

    chunked_cfg = dataclasses.replace(TINY, logprob_chunk_size=chunk)
    value_and_grad = jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=1)
    (whole_value, whole), whole_grads = value_and_grad(params, TINY)
    (chunk_value, chunked), chunk_grads = value_and_grad(params, chunked_cfg)
    # Each log-prob and entropy is a sum over the vocabulary (log-sum-exp, sum p log p) of logits that the two
    # programs compute in matmuls of other shapes: gamma_V relative to the values' size bounds the difference.
    for expected, got in zip(whole, chunked):
        np.testing.assert_allclose(got, expected, rtol=0, atol=2 * TINY.vocab_size * UNIT_ROUNDOFF
                                   * max(1.0, float(np.max(np.abs(expected)))))
    tolerance = 2 * ROWS * COMPLETION * UNIT_ROUNDOFF  # gamma_n over the token sum, relative to the norm
    np.testing.assert_allclose(chunk_value, whole_value, rtol=tolerance)
    difference = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(chunk_grads),
                                                                   jax.tree.leaves(whole_grads))))
    assert difference <= tolerance * jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(whole_grads)))


@pytest.mark.parametrize("family", [{}, {"sliding_window": 3, "sliding_window_pattern": 2}])
@pytest.mark.parametrize("rows_per_prompt", [2, 4])
def test_a_shared_prompt_forward_gives_each_rows_values_and_gradients(rows_per_prompt, family):
    """Runs of rows that share a prompt (left-padded, one a single token) computed with the prompt run once and its
    keys and values shared (rows_per_prompt) equal the per-row forward pass, log-probs, entropies and gradients;
    only summation orders differ, over the sequence, hidden and vocabulary axes of each layer."""
    cfg = dataclasses.replace(TINY, **family)
    params = init_params(cfg, jax.random.key(1))
    prompt, prompt_mask, _, _ = inputs(cfg)
    rng = np.random.default_rng(4)
    rows = ROWS * rows_per_prompt
    completion = jnp.asarray(rng.integers(1, cfg.vocab_size, (rows, COMPLETION)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(rows, COMPLETION)), jnp.float32)
    repeated = [jnp.repeat(x, rows_per_prompt, axis=0) for x in (prompt, prompt_mask)]

    def objective(params, shared):
        logprobs, entropy = completion_logprobs(params, *repeated, completion, cfg, 0.9, with_entropy=True,
                                                rows_per_prompt=shared)
        return jnp.sum(weights * logprobs) + jnp.sum(entropy), (logprobs, entropy)

    value_and_grad = jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=1)
    (per_row_value, per_row), per_row_grads = value_and_grad(params, 1)
    (shared_value, shared), shared_grads = value_and_grad(params, rows_per_prompt)
    terms = cfg.num_layers * (PROMPT + COMPLETION + cfg.hidden_size + cfg.intermediate_size) + cfg.vocab_size
    for expected, got in zip(per_row, shared):
        np.testing.assert_allclose(got, expected, rtol=0, atol=2 * terms * UNIT_ROUNDOFF
                                   * max(1.0, float(np.max(np.abs(expected)))))
    tolerance = 2 * (rows * COMPLETION + terms) * UNIT_ROUNDOFF
    np.testing.assert_allclose(shared_value, per_row_value, rtol=tolerance)
    difference = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(shared_grads),
                                                                   jax.tree.leaves(per_row_grads))))
    assert difference <= tolerance * jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(per_row_grads)))


def test_chunked_logits_keep_a_152k_vocabulary_update_small():
    """The gradient of the update's log-probs and entropies, compiled for a Qwen2.5-sized vocabulary (152,064) and
    8 x 512 completion tokens: one [8, 512, V] float32 buffer is 2.5 GB, and the whole-completion program keeps
    several. In chunks of 16 positions the compiled program's temporaries stay below 0.5 GB."""
    cfg = ModelConfig(vocab_size=152_064, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32,
                      intermediate_size=128)
    rows, completion_length = 8, 512
    full_logits_bytes = rows * completion_length * cfg.vocab_size * 4
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    prompt = jax.ShapeDtypeStruct((rows, 16), jnp.int32)
    completion = jax.ShapeDtypeStruct((rows, completion_length), jnp.int32)

    def temporary_bytes(model_cfg):
        def loss(params, prompt, completion):
            logprobs, entropy = completion_logprobs(params, prompt, jnp.ones_like(prompt), completion, model_cfg, 1.0,
                                                    with_entropy=True)
            return jnp.sum(logprobs) + jnp.sum(entropy)

        compiled = jax.jit(jax.grad(loss)).lower(params, prompt, completion).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    whole, chunked = temporary_bytes(cfg), temporary_bytes(dataclasses.replace(cfg, logprob_chunk_size=16))
    assert whole > full_logits_bytes
    assert chunked < 0.5e9 < full_logits_bytes / 4
