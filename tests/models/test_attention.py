"""Attention through jax.nn.dot_product_attention (`model.attention: xla`; `cudnn` is the same call with
NVIDIA's flash kernel) computes what the einsum path computes, on left-padded batches with grouped-query heads
and sliding windows, and stays finite on padding rows that attend to nothing."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.config import ConfigError, ModelConfig
from rlreason.models.store import run_model_config
from rlreason.models.transformer import forward, init_params, positions_from_mask

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
