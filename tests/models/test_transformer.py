"""The model against itself under equivalent inputs: padding, caching, scanning, sliding windows; and the SiLU
MLP's hand-written gradient against its formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.config import LoraConfig, ModelConfig
from rlreason.models.lora import init_adapters, with_adapters
from rlreason.models.transformer import (PROJECTIONS, OutputMajor, decode_weights, forward, init_cache, init_params,
                                         layer_list, layer_windows, logical_axes, param_specs, positions_from_mask,
                                         project, silu_gated)

FAMILIES = {
    "llama": {},
    "qwen2": {"qkv_bias": True, "tie_embeddings": False},
    "qwen3": {"qk_norm": True},
    "gemma2": {"norm_scale_plus_one": True, "post_norms": True, "attn_logit_softcap": 50.0,
               "final_logit_softcap": 30.0, "embed_scale": True, "hidden_act": "gelu_tanh", "sliding_window": 3,
               "sliding_window_pattern": 2, "query_pre_attn_scalar": 16.0},
}


def tiny(**overrides) -> ModelConfig:
    settings = dict(vocab_size=48, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
                    intermediate_size=40, init_std=0.3)
    return ModelConfig(**{**settings, **overrides})


def full_forward(params, tokens, cfg):
    mask = jnp.ones(tokens.shape, bool)
    return forward(params, tokens, positions_from_mask(mask), mask, cfg)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_does_not_change_logits(family):
    cfg = tiny(**FAMILIES[family])
    params = init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray([[5, 9, 11, 20, 7, 3]])
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, 3), bool), jnp.ones((1, 6), bool)], axis=1)
    logits, _ = forward(params, padded, positions_from_mask(mask), mask, cfg)
    np.testing.assert_allclose(logits[:, 3:], full_forward(params, tokens, cfg), atol=2e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_token_by_token_equals_full_forward(family):
    cfg = tiny(**FAMILIES[family])
    params = init_params(cfg, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (2, 7), 0, cfg.vocab_size)
    expected = full_forward(params, tokens, cfg)
    cache = init_cache(cfg, 2, 7)
    key_valid = jnp.zeros((2, 7), bool)
    for index in range(7):
        key_valid = key_valid.at[:, index].set(True)
        logits, cache = forward(params, tokens[:, index:index + 1], jnp.full((2, 1), index), key_valid, cfg,
                                cache, index)
        np.testing.assert_allclose(logits[:, 0], expected[:, index], atol=2e-5)


def test_scanned_and_unrolled_layers_agree():
    cfg = tiny(**FAMILIES["gemma2"])
    params = init_params(cfg, jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, cfg.vocab_size)
    unrolled = tiny(**FAMILIES["gemma2"], scan_layers=False)
    np.testing.assert_allclose(full_forward(params, tokens, cfg), full_forward(params, tokens, unrolled), atol=1e-5)


def test_sliding_window_limits_what_a_layer_sees():
    cfg = tiny(sliding_window=2, sliding_window_pattern=3, num_layers=1)
    assert layer_windows(tiny(sliding_window=4, sliding_window_pattern=2, num_layers=4)).tolist() == [4, 0, 4, 0]
    params = init_params(cfg, jax.random.key(5))
    tokens = jax.random.randint(jax.random.key(6), (1, 6), 0, cfg.vocab_size)
    changed_far = tokens.at[0, 0].set((tokens[0, 0] + 1) % cfg.vocab_size)
    # With one windowed layer, the last token (window 2) cannot see token 0: its logits must not move.
    np.testing.assert_allclose(full_forward(params, tokens, cfg)[:, -1], full_forward(params, changed_far, cfg)[:, -1],
                               atol=1e-6)
    assert not np.allclose(full_forward(params, tokens, cfg)[:, 1], full_forward(params, changed_far, cfg)[:, 1])


def test_param_tree_carries_logical_axes():
    cfg = tiny(tie_embeddings=False, qkv_bias=True)
    params = init_params(cfg, jax.random.key(0))
    axes = logical_axes(cfg)
    assert jax.tree.structure(params) == jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple))
    for leaf, names in zip(jax.tree.leaves(params), jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
        assert leaf.ndim == len(names)
    assert axes["layers"]["q_proj"] == ("layers", "embed", "heads", "head_dim")
    assert axes["lm_head"] == ("embed", "vocab")
    assert param_specs(cfg)["layers"]["k_proj"].shape == (3, 32, 2, 8)


def test_bfloat16_compute_with_float32_params_is_close():
    cfg = tiny()
    params = init_params(cfg, jax.random.key(7))
    assert params["embed"].dtype == jnp.float32
    tokens = jax.random.randint(jax.random.key(8), (2, 5), 0, cfg.vocab_size)
    low = full_forward(params, tokens, tiny(dtype="bfloat16"))
    assert low.dtype == jnp.float32  # logits always come back in float32
    np.testing.assert_allclose(low, full_forward(params, tokens, cfg), atol=0.15)


def test_decode_weights_give_each_projection_its_product_in_bfloat16():
    """decode_weights (the sampler's once-per-call preparation) transposes every projection weight in 16-bit
    compute (OutputMajor); `project` must still compute x W + x A B. Checked against a float64 product of the
    same bfloat16 values: each bfloat16 rounding (the two products, the sum) is within 2^-8 of its magnitude, so
    4 * 2^-8 of the largest output bounds the difference, while a wrongly ordered weight is off by O(1)."""
    cfg = tiny(dtype="bfloat16")
    lora = LoraConfig(rank=4)
    adapters = init_adapters(cfg, lora, jax.random.key(1))
    adapters = jax.tree.map(lambda leaf: jax.random.normal(jax.random.key(2), leaf.shape) * 0.3, adapters)
    params = with_adapters(init_params(cfg, jax.random.key(0)), adapters, lora)
    prepared = layer_list(decode_weights(params, cfg))[1]
    assert all(isinstance(prepared[name], OutputMajor) for name in PROJECTIONS)
    original = jax.tree.map(lambda leaf: leaf.astype(jnp.bfloat16), layer_list(params)[1])
    as_float64 = lambda array: np.asarray(array.astype(jnp.float32), np.float64)  # noqa: E731
    inputs = {"bte": (2, 3, cfg.hidden_size), "bthd": (2, 3, cfg.num_heads, cfg.head_dim),
              "ne": (6, cfg.hidden_size), "nm": (6, cfg.intermediate_size)}
    for index, (name, equation) in enumerate(PROJECTIONS.items()):
        x_axes = equation.split(",")[0]
        x = jax.random.normal(jax.random.key(10 + index), inputs[x_axes]).astype(jnp.bfloat16)
        adapter = original["lora"][name]
        kept = x_axes[:2] if x_axes.startswith("bt") else x_axes[:1]
        contracted = x_axes[len(kept):]
        produced = equation.split("->")[1][len(kept):]
        expected = (np.einsum(equation, as_float64(x), as_float64(original[name]))
                    + np.einsum(f"{x_axes},{contracted}r,r{produced}->{equation.split('->')[1]}", as_float64(x),
                                as_float64(adapter["a"]), as_float64(adapter["b"])))
        bound = 4 * 2.0**-8 * np.abs(expected).max()
        for layer in (original, prepared):
            np.testing.assert_allclose(as_float64(project(layer, name, x, jnp.bfloat16)), expected, atol=bound,
                                       err_msg=name)


def test_decode_weights_keep_float32_weights_as_they_are():
    params = init_params(tiny(), jax.random.key(0))
    prepared = layer_list(decode_weights(params, tiny()))
    assert isinstance(prepared, tuple) and len(prepared) == 3
    for name in PROJECTIONS:
        np.testing.assert_array_equal(prepared[2][name], params["layers"][name][2])


@pytest.mark.parametrize("dtype, value_rtol, gradient_rtol", [("float32", 1e-6, 1e-6),
                                                             ("bfloat16", 2.0**-6, 2.0**-8)])
def test_silu_gated_gradient_follows_its_formula(dtype, value_rtol, gradient_rtol):
    """silu(g) u and its gradients against float64 numpy: d/dg = c u (s + g s (1 - s)), d/du = c g s, with s the
    logistic sigmoid of g and c the incoming gradient. Tolerances: float32 rounding of a few operations; for
    bfloat16 operands the value takes a bfloat16 rounding in each of its few operations (2^-9 relative each) and
    each gradient, computed in float32, one rounding of its result."""
    rng = np.random.default_rng(0)
    gate, up, incoming = (jnp.asarray(rng.normal(0, 3, (6, 40)), dtype) for _ in range(3))
    out, pullback = jax.vjp(silu_gated, gate, up)
    gate_grad, up_grad = pullback(incoming)
    g, u, c = (np.asarray(x, np.float64) for x in (gate, up, incoming))
    sigmoid = 1 / (1 + np.exp(-g))
    for got, want, rtol in [(out, g * sigmoid * u, value_rtol),
                            (gate_grad, c * u * (sigmoid + g * sigmoid * (1 - sigmoid)), gradient_rtol),
                            (up_grad, c * g * sigmoid, gradient_rtol)]:
        assert got.dtype == jnp.dtype(dtype)
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=rtol * np.abs(want).max())
