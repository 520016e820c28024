"""LoRA adapters and the quantized base of QLoRA, against references written from the formulas in numpy float64.

Tolerances: the float64 references differ from float32 computation by rounding only. Quantization codes are
compared exactly; dequantized values and logits within 1e-5 / 1e-4 absolute (float32 on weights and logits
of order 1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_reference import hf_config, hf_logits, rlreason_logits

from rlreason.config import ConfigError, LoraConfig, ModelConfig
from rlreason.models.families import model_config_from_hf
from rlreason.models.hf_export import save_hf
from rlreason.models.lora import (LORA_TARGETS, adapter_specs, base_specs, check_quantizable, init_adapters,
                                  merge_adapters, quantize_base, with_adapters)
from rlreason.models.quantize import NF4_LEVELS, QuantizedWeight, block_size, quantize
from rlreason.models.transformer import init_params

LOGITS_ATOL = 1e-4
CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, init_std=0.2)


def numpy_blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight as float64 [..., blocks, block], absmax per block) for blocks along the last axis."""
    n = weight.shape[-1]
    blocks = weight.astype(np.float64).reshape(*weight.shape[:-1], n // block_size(n), block_size(n))
    return blocks, np.abs(blocks).max(axis=-1)


def test_block_size_is_the_largest_divisor_up_to_64():
    assert [block_size(n) for n in (64, 576, 1536, 12, 96, 7, 130)] == [64, 64, 64, 12, 48, 7, 26]


def test_nf4_codes_are_the_nearest_levels_packed_two_per_byte():
    weight = np.random.default_rng(0).normal(size=(3, 5, 128)).astype(np.float32)
    quantized = quantize(jnp.asarray(weight), "nf4")
    blocks, absmax = numpy_blocks(weight)
    nearest = np.abs((blocks / absmax[..., None])[..., None] - NF4_LEVELS.astype(np.float64)).argmin(-1)
    nearest = nearest.reshape(weight.shape)
    codes = np.asarray(quantized.codes)
    assert codes.dtype == np.uint8 and codes.shape == (3, 5, 64)
    np.testing.assert_array_equal(codes & 15, nearest[..., 0::2])
    np.testing.assert_array_equal(codes >> 4, nearest[..., 1::2])
    expected = (NF4_LEVELS[nearest].reshape(blocks.shape) * absmax[..., None]).reshape(weight.shape)
    np.testing.assert_allclose(np.asarray(quantized.dequantize(jnp.float32)), expected, rtol=0, atol=1e-5)
    # 4 bits a weight plus a float32 scale per 64 weights.
    assert quantized.nbytes == weight.size // 2 + weight.size // 64 * 4


def test_int8_rounds_to_the_nearest_of_255_levels_per_block():
    weight = np.random.default_rng(1).normal(size=(4, 96)).astype(np.float32)
    quantized = quantize(jnp.asarray(weight), "int8")
    blocks, absmax = numpy_blocks(weight)
    codes = np.round(blocks / absmax[..., None] * 127)
    np.testing.assert_array_equal(np.asarray(quantized.codes), codes.reshape(weight.shape))
    np.testing.assert_allclose(np.asarray(quantized.dequantize(jnp.float32)),
                               (codes * absmax[..., None] / 127).reshape(weight.shape), rtol=0, atol=1e-5)
    # Half a level is the worst rounding error.
    assert np.all(np.abs(np.asarray(quantized.dequantize(jnp.float32)) - weight)
                  <= (absmax[..., None] / 254).repeat(block_size(96), -1).reshape(weight.shape) + 1e-6)


def test_an_all_zero_block_stays_zero():
    for format in ("nf4", "int8"):
        np.testing.assert_array_equal(np.asarray(quantize(jnp.zeros((2, 8)), format).dequantize(jnp.float32)), 0)


def random_adapters(cfg: ModelConfig, lora: LoraConfig, seed: int):
    """Adapters whose b is random too, so that every projection's update shows in the logits."""
    adapters = init_adapters(cfg, lora, jax.random.key(seed))
    return jax.tree.map(lambda leaf: leaf + 0.3 * jax.random.normal(jax.random.key(seed + 1), leaf.shape), adapters)


def numpy_merged(base, adapters, lora: LoraConfig):
    """W + (alpha / r) A B for every adapted weight, in float64 from the formula."""
    merged = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), base)
    for name, pair in adapters["layers"].items():
        a, b = np.asarray(pair["a"], np.float64), np.asarray(pair["b"], np.float64)
        weight = merged["layers"][name]
        layers, rank = b.shape[:2]
        update = np.einsum("lir,lro->lio", a.reshape(layers, -1, rank), b.reshape(layers, rank, -1))
        merged["layers"][name] = weight + lora.alpha / lora.rank * update.reshape(weight.shape)
    return merged


def logits_of(params, cfg=CFG, seed: int = 2):
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 11))
    return rlreason_logits(params, cfg, tokens)


@pytest.mark.parametrize("targets", [tuple(LORA_TARGETS), ("q_proj", "o_proj"), ("down_proj",)])
def test_adapted_forward_equals_the_base_with_merged_weights(targets):
    lora = LoraConfig(rank=3, alpha=6.0, targets=targets)
    base = init_params(CFG, jax.random.key(0))
    adapters = random_adapters(CFG, lora, seed=5)
    reference = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), numpy_merged(base, adapters, lora))
    np.testing.assert_allclose(logits_of(with_adapters(base, adapters, lora)), logits_of(reference), rtol=0,
                               atol=LOGITS_ATOL)
    merged = merge_adapters(with_adapters(base, adapters, lora), jnp.float32)
    jax.tree.map(lambda ours, theirs: np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5), merged, reference)


def test_fresh_adapters_leave_the_model_as_it_was():
    lora = LoraConfig(rank=4)
    base = init_params(CFG, jax.random.key(0))
    adapters = init_adapters(CFG, lora, jax.random.key(1))
    assert all(not np.any(pair["b"]) for pair in adapters["layers"].values())
    assert all(np.std(np.asarray(pair["a"])) > 0 for pair in adapters["layers"].values())
    np.testing.assert_array_equal(logits_of(with_adapters(base, adapters, lora)), logits_of(base))


def test_adapter_shapes_and_axes_follow_each_weight_split_into_inputs_and_outputs():
    specs = adapter_specs(CFG, LoraConfig(rank=5))["layers"]
    assert specs["q_proj"]["a"].shape == (2, 32, 5) and specs["q_proj"]["b"].shape == (2, 5, 4, 8)
    assert specs["o_proj"]["a"].shape == (2, 4, 8, 5) and specs["o_proj"]["b"].shape == (2, 5, 32)
    assert specs["o_proj"]["a"].axes == ("layers", "heads", "head_dim", "lora_rank")
    assert specs["down_proj"]["b"].axes == ("layers", "lora_rank", "embed")


@pytest.mark.parametrize("format", ["nf4", "int8"])
def test_a_quantized_base_runs_as_its_dequantized_weights(format):
    lora = LoraConfig(rank=2, base_quantization=format)
    base = init_params(CFG, jax.random.key(0))
    quantized = quantize_base(base, lora)
    assert all(isinstance(quantized["layers"][name], QuantizedWeight) for name in LORA_TARGETS)
    assert not isinstance(quantized["embed"], QuantizedWeight)
    dequantized = merge_adapters(quantized, jnp.float32)
    np.testing.assert_allclose(logits_of(quantized), logits_of(dequantized), rtol=0, atol=LOGITS_ATOL)
    # The dequantized weights are the base's to within half the widest gap between levels, per block.
    half_gap = {"nf4": np.max(np.diff(NF4_LEVELS)) / 2, "int8": 1 / 254}[format]
    for name in LORA_TARGETS:
        weight = np.asarray(base["layers"][name])
        _, absmax = numpy_blocks(weight)
        bound = (half_gap * absmax[..., None]).repeat(block_size(weight.shape[-1]), -1).reshape(weight.shape)
        error = np.abs(np.asarray(dequantized["layers"][name]) - weight)
        assert np.all(error <= bound + 1e-6) and np.any(error > 0)
    shapes = jax.tree.map(lambda leaf: leaf.shape, quantized)
    expected = jax.tree.map(lambda spec: spec.shape, base_specs(CFG, lora), is_leaf=lambda node: hasattr(node, "axes"))
    assert shapes == expected


def test_nf4_needs_even_last_axes():
    odd = dataclasses.replace(CFG, head_dim=7)
    with pytest.raises(ConfigError, match="lora.base_quantization"):
        check_quantizable(odd, LoraConfig(rank=2, base_quantization="nf4"))
    check_quantizable(odd, LoraConfig(rank=2, base_quantization="int8"))


def test_lora_settings_are_validated_at_load():
    from tiny_run import tiny_config

    for overrides, key in ((["lora.rank=-1"], "lora.rank"), (["lora.base_quantization=nf4"], "lora.base_quantization"),
                           (["lora.rank=4", "lora.targets=[q_proj, q_proj]"], "lora.targets"),
                           (["lora.rank=4", "lora.targets=[qkv]"], "lora.targets"),
                           (["lora.rank=4", "grpo.beta=0.1", "grpo.sync_ref_model=true"], "grpo.sync_ref_model")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            tiny_config(*overrides)


def test_the_merged_export_runs_identically_in_transformers(tmp_path):
    cfg = model_config_from_hf(hf_config("qwen2_bias_tied").to_dict())
    lora = LoraConfig(rank=4, alpha=8.0, base_quantization="nf4")
    base = quantize_base(init_params(dataclasses.replace(cfg, init_std=0.1), jax.random.key(3)), lora)
    policy = with_adapters(base, random_adapters(cfg, lora, seed=7), lora)
    save_hf(merge_adapters(policy, jnp.float32), cfg, tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 18))
    np.testing.assert_allclose(hf_logits(model, tokens), rlreason_logits(policy, cfg, tokens), rtol=0,
                               atol=LOGITS_ATOL)
