"""Attention through jax.nn.dot_product_attention (`model.attention: xla`; `cudnn` is the same call with
NVIDIA's flash kernel) computes what the einsum path computes, on left-padded batches with grouped-query heads
and sliding windows, and stays finite on padding rows that attend to nothing. The splash kernel (`splash`, run
by Pallas' interpreter on a CPU) computes the einsum path's logits and gradients, with padding, packed rows and
soft-capped logits; sliding windows are refused for it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.config import ConfigError, ModelConfig
from rlreason.models.store import run_model_config
from rlreason.models.transformer import forward, init_params, positions_from_mask

UNIT_ROUNDOFF = 2.0**-24

CASES = {
    "gqa": ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                       intermediate_size=48, init_std=0.3),
    "window": ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=8,
                          intermediate_size=48, init_std=0.3, sliding_window=3, sliding_window_pattern=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dot_product_attention_equals_the_einsum_path(case):
    cfg = CASES[case]
    params = init_params(cfg, jax.random.key(0))
    mask = jnp.asarray(np.arange(9)[None, :] >= np.array([[0], [3], [8]]))
    tokens = jnp.where(mask, jax.random.randint(jax.random.key(1), mask.shape, 1, cfg.vocab_size), 0)
    einsum, _ = forward(params, tokens, positions_from_mask(mask), mask, cfg)
    fused, _ = forward(params, tokens, positions_from_mask(mask), mask, dataclasses.replace(cfg, attention="xla"))
    assert np.all(np.isfinite(np.asarray(fused)))
    np.testing.assert_allclose(np.asarray(fused)[np.asarray(mask)], np.asarray(einsum)[np.asarray(mask)],
                               rtol=0, atol=1e-5)


def test_soft_capped_attention_keeps_the_einsum_path():
    stored = ModelConfig(attn_logit_softcap=50.0)
    with pytest.raises(ConfigError, match="'model.attention'"):
        run_model_config(stored, ModelConfig(attention="cudnn"), "models/gemma2")


SPLASH_CASES = {
    "gqa": CASES["gqa"],
    "softcap": dataclasses.replace(CASES["gqa"], attn_logit_softcap=2.0),  # small enough to bite at init_std 0.3
    "one_kv_head": dataclasses.replace(CASES["gqa"], num_kv_heads=1),
    "remat_scan": dataclasses.replace(CASES["gqa"], remat=True, scan_layers=True),  # as the TPU configs run
}


def masked_logits_and_grads(cfg: ModelConfig, params, tokens, mask, segment_ids=None):
    """(logits [B, T, V] and the gradient of sum(logits^2) over the real tokens), compiled."""
    def loss(params):
        logits, _ = forward(params, tokens, positions, mask, cfg, segment_ids=segment_ids)
        return jnp.sum(jnp.where(mask[..., None], logits, 0.0) ** 2), logits

    positions = positions_from_mask(mask) if segment_ids is None else packed_positions
    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits), grads


packed_segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 2, 3, 3, 3, 0, 0, 0, 0]])
packed_positions = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 1, 2, 0, 0, 0, 0]])


@pytest.mark.parametrize("packed", [False, True], ids=["left_padded", "packed"])
@pytest.mark.parametrize("case", list(SPLASH_CASES))
def test_splash_attention_equals_the_einsum_path(case, packed):
    cfg = SPLASH_CASES[case]
    params = init_params(cfg, jax.random.key(0))
    segment_ids = packed_segments if packed else None
    mask = packed_segments > 0 if packed else jnp.asarray(np.arange(9)[None, :] >= np.array([[0], [3], [8]]))
    tokens = jnp.where(mask, jax.random.randint(jax.random.key(1), mask.shape, 1, cfg.vocab_size), 0)
    einsum, einsum_grads = masked_logits_and_grads(cfg, params, tokens, mask, segment_ids)
    splash, splash_grads = masked_logits_and_grads(dataclasses.replace(cfg, attention="splash"), params, tokens, mask,
                                                   segment_ids)
    # The kernel sums each query's keys blockwise with a running maximum, the einsum path in one pass: float32
    # sums in other orders, over the keys (9), hidden (32) and MLP (48) widths of each layer and the vocabulary.
    terms = cfg.num_layers * (mask.shape[1] + cfg.hidden_size + cfg.intermediate_size) + cfg.vocab_size
    real = np.asarray(mask)
    np.testing.assert_allclose(splash[real], einsum[real], rtol=0,
                               atol=2 * terms * UNIT_ROUNDOFF * float(np.abs(einsum[real]).max()))
    # The gradient adds the loss's sum over every real token's logits.
    tolerance = 2 * (terms + int(real.sum()) * cfg.vocab_size) * UNIT_ROUNDOFF
    difference = np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2)
                             for a, b in zip(jax.tree.leaves(splash_grads), jax.tree.leaves(einsum_grads))))
    norm = np.sqrt(sum(np.sum(np.asarray(g) ** 2) for g in jax.tree.leaves(einsum_grads)))
    assert difference <= tolerance * norm


def test_splash_attention_refuses_sliding_windows():
    with pytest.raises(ConfigError, match="'model.attention' must not be 'splash' for a model with sliding-window"):
        run_model_config(CASES["window"], ModelConfig(attention="splash"), "models/gemma2")
