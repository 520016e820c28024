"""Attention through jax.nn.dot_product_attention (`model.attention: xla`; `cudnn` is the same call with
NVIDIA's flash kernel) computes what the einsum path computes, on left-padded batches with grouped-query heads
and sliding windows, and stays finite on padding rows that attend to nothing. The splash kernel (`splash`, run
by Pallas' interpreter on a CPU) computes the einsum path's logits and gradients, with padding, packed rows and
soft-capped logits; sliding windows are refused for it. The einsum path in causal query blocks
(`model.attention_block_size`) computes the same logits and gradients as in one block, and its score products
stop at each block's end."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.config import ConfigError, ModelConfig
from rlreason.models.store import run_model_config
from rlreason.models.transformer import forward, init_params, positions_from_mask, query_blocks

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


def assert_computes_the_einsum_path(cfg: ModelConfig, variant: ModelConfig, packed: bool):
    """`variant` (cfg with another attention setting) computes cfg's logits and gradients on left-padded or packed
    rows, up to float32 summation order: over the keys, hidden and MLP widths of each layer and the vocabulary
    (and, for the gradient, the loss's sum over every real token's logits)."""
    params = init_params(cfg, jax.random.key(0))
    segment_ids = packed_segments if packed else None
    mask = packed_segments > 0 if packed else jnp.asarray(np.arange(9)[None, :] >= np.array([[0], [3], [8]]))
    tokens = jnp.where(mask, jax.random.randint(jax.random.key(1), mask.shape, 1, cfg.vocab_size), 0)
    expected, expected_grads = masked_logits_and_grads(cfg, params, tokens, mask, segment_ids)
    actual, actual_grads = masked_logits_and_grads(variant, params, tokens, mask, segment_ids)
    terms = cfg.num_layers * (mask.shape[1] + cfg.hidden_size + cfg.intermediate_size) + cfg.vocab_size
    real = np.asarray(mask)
    np.testing.assert_allclose(actual[real], expected[real], rtol=0,
                               atol=2 * terms * UNIT_ROUNDOFF * float(np.abs(expected[real]).max()))
    tolerance = 2 * (terms + int(real.sum()) * cfg.vocab_size) * UNIT_ROUNDOFF
    difference = np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2)
                             for a, b in zip(jax.tree.leaves(actual_grads), jax.tree.leaves(expected_grads))))
    norm = np.sqrt(sum(np.sum(np.asarray(g) ** 2) for g in jax.tree.leaves(expected_grads)))
    assert difference <= tolerance * norm


@pytest.mark.parametrize("packed", [False, True], ids=["left_padded", "packed"])
@pytest.mark.parametrize("case", list(SPLASH_CASES))
def test_splash_attention_equals_the_einsum_path(case, packed):
    # The kernel sums each query's keys blockwise with a running maximum, the einsum path in one pass.
    cfg = SPLASH_CASES[case]
    assert_computes_the_einsum_path(cfg, dataclasses.replace(cfg, attention="splash"), packed)


def test_splash_attention_refuses_sliding_windows():
    with pytest.raises(ConfigError, match="'model.attention' must not be 'splash' for a model with sliding-window"):
        run_model_config(CASES["window"], ModelConfig(attention="splash"), "models/gemma2")


BLOCK_CASES = {**CASES, "softcap": SPLASH_CASES["softcap"], "remat_scan": SPLASH_CASES["remat_scan"]}


@pytest.mark.parametrize("block_size", [1, 4])
@pytest.mark.parametrize("packed", [False, True], ids=["left_padded", "packed"])
@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_causal_query_blocks_equal_one_block(case, packed, block_size):
    cfg = BLOCK_CASES[case]
    assert_computes_the_einsum_path(cfg, dataclasses.replace(cfg, attention_block_size=block_size), packed)


def score_shapes(cfg: ModelConfig, length: int) -> list[tuple[int, int]]:
    """(queries, keys) of every query-key product in the compiled forward pass of 2 rows of `length` tokens: the
    float32 dots whose result is [B, K, G * t, s], read from the lowered program (the products with the values
    end in the head size instead; pick lengths whose key widths differ from it)."""
    mask = jnp.ones((2, length), bool)
    lowered = jax.jit(lambda params: forward(params, jnp.ones((2, length), jnp.int32), positions_from_mask(mask),
                                             mask, cfg)[0]).lower(init_params(cfg, jax.random.key(0)))
    groups = cfg.num_heads // cfg.num_kv_heads
    results = re.findall(r"stablehlo\.dot_general.*-> tensor<2x" + str(cfg.num_kv_heads) + r"x(\d+)x(\d+)xf32>",
                         lowered.as_text())
    return sorted((int(rows) // groups, int(keys)) for rows, keys in results
                  if int(rows) % groups == 0 and int(keys) != cfg.head_dim)


def test_query_blocks_attend_only_to_keys_up_to_their_end():
    cfg = dataclasses.replace(CASES["gqa"], scan_layers=False)
    assert query_blocks(11, 3) == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert query_blocks(11, 0) == query_blocks(11, 11) == [(0, 11)]
    assert score_shapes(cfg, 11) == [(11, 11)] * cfg.num_layers
    blocked = score_shapes(dataclasses.replace(cfg, attention_block_size=3), 11)
    assert blocked == sorted([(3, 3), (3, 6), (3, 9), (2, 11)] * cfg.num_layers)


def test_query_blocks_need_the_einsum_path():
    with pytest.raises(ConfigError, match="'model.attention_block_size'.*einsum"):
        run_model_config(CASES["gqa"], ModelConfig(attention="xla", attention_block_size=64), "models/gqa")
    with pytest.raises(ConfigError, match="'model.attention_block_size' must be >= 0"):
        run_model_config(CASES["gqa"], ModelConfig(attention_block_size=-1), "models/gqa")
