"""LoRA and QLoRA: low-rank adapters on a frozen (optionally quantized) base, as pure functions over param trees.

The adapters of projection W (one of LORA_TARGETS, stacked over layers like W) are
    a  [L, <W's input axes>, r]   normal(0, 1 / fan_in), so that x A has the scale of x
    b  [L, r, <W's output axes>]  zeros, so that a fresh adapter leaves the base model unchanged
and the adapted projection computes x W + (alpha / r) x A B (`transformer.project`). Training differentiates the
adapters only: the optimizer state holds nothing of the base, and the reference policy is the base itself with
the adapters switched off (`with_adapters` not applied), so no second copy of the weights exists.

QLoRA quantizes the base's projections (`rlreason.models.quantize`, int8 or NF4) once at the start; the
embedding, the norms and the LM head stay in the parameter dtype. `merge_adapters` folds the adapters into a
plain params tree (W + (alpha / r) A B, dequantized) for export and for the run's final model directory.

qwix (which Tunix uses) adds LoRA by intercepting the matmuls of Flax modules; this model is pure functions over
a dict of arrays, so the adapters are applied here, in the one place the model multiplies by its weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rlreason.config import ConfigError, LoraConfig, ModelConfig
from rlreason.models.quantize import QuantizedWeight, dense, quantize, quantized_shapes
from rlreason.models.transformer import Params, ParamSpec, param_specs

# Projection -> how many of its axes after `layers` are inputs (contracted with the activations).
LORA_TARGETS = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1, "up_proj": 1, "down_proj": 1}


def adapter_specs(model_cfg: ModelConfig, lora: LoraConfig) -> Params:
    """The adapters' tree {"layers": {target: {"a": ParamSpec, "b": ParamSpec}}}, with logical axes (the rank
    axis is `lora_rank`)."""
    layers = param_specs(model_cfg)["layers"]
    tree = {}
    for name in lora.targets:
        spec, inputs = layers[name], LORA_TARGETS[name]
        split = 1 + inputs
        tree[name] = {
            "a": ParamSpec((*spec.shape[:split], lora.rank), (*spec.axes[:split], "lora_rank"), "normal"),
            "b": ParamSpec((spec.shape[0], lora.rank, *spec.shape[split:]),
                           (spec.axes[0], "lora_rank", *spec.axes[split:]), "zeros"),
        }
    return {"layers": tree}


def init_adapters(model_cfg: ModelConfig, lora: LoraConfig, rng: jax.Array) -> Params:
    """Fresh adapters in `model_cfg.param_dtype`: a ~ normal(0, 1 / fan_in), b = 0. Jit-able (sharded by
    out_shardings)."""
    specs = adapter_specs(model_cfg, lora)
    dtype = jnp.dtype(model_cfg.param_dtype)
    tree = {}
    for key, (name, pair) in zip(jax.random.split(rng, len(specs["layers"])), specs["layers"].items()):
        fan_in = math.prod(pair["a"].shape[1:-1])
        tree[name] = {"a": (jax.random.normal(key, pair["a"].shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype),
                      "b": jnp.zeros(pair["b"].shape, dtype)}
    return {"layers": tree}


def with_adapters(base: Params, adapters: Params, lora: LoraConfig) -> Params:
    """The params the model runs with: `base` (quantized or not) with `adapters` under layers["lora"], each b
    scaled by alpha / r. Costs no copy of the base."""
    scale = lora.alpha / lora.rank
    scaled = {name: {"a": pair["a"], "b": pair["b"] * scale} for name, pair in adapters["layers"].items()}
    return {**base, "layers": {**base["layers"], "lora": scaled}}


def quantize_base(base: Params, lora: LoraConfig) -> Params:
    """`base` with every projection quantized in `lora.base_quantization` (unchanged for "none")."""
    if lora.base_quantization == "none":
        return base
    layers = {name: quantize(leaf, lora.base_quantization) if name in LORA_TARGETS else leaf
              for name, leaf in base["layers"].items()}
    return {**base, "layers": layers}


def check_quantizable(model_cfg: ModelConfig, lora: LoraConfig) -> None:
    """Raises ConfigError when a projection's last axis cannot be packed in lora.base_quantization's codes."""
    if lora.base_quantization != "nf4":
        return
    odd = [name for name, spec in param_specs(model_cfg)["layers"].items()
           if name in LORA_TARGETS and spec.shape[-1] % 2]
    if odd:
        raise ConfigError(f"config key 'lora.base_quantization' is 'nf4', which packs two 4-bit codes per byte along "
                          f"each weight's last axis, but {', '.join(odd)} of the model have an odd last axis; use "
                          f"base_quantization: int8")


def base_specs(model_cfg: ModelConfig, lora: LoraConfig) -> Params:
    """`param_specs` of the frozen base: quantized projections become QuantizedWeight(codes, scales) of
    ParamSpecs with the weight's logical axes (the packed codes and the scales shorten only the last axis)."""
    specs = param_specs(model_cfg)
    if lora.base_quantization == "none":
        return specs

    def quantized(spec: ParamSpec) -> QuantizedWeight:
        codes, scales = quantized_shapes(spec.shape, lora.base_quantization)
        return QuantizedWeight(ParamSpec(codes, spec.axes, "zeros"), ParamSpec(scales, spec.axes, "ones"),
                               lora.base_quantization)

    layers = {name: quantized(spec) if name in LORA_TARGETS else spec for name, spec in specs["layers"].items()}
    return {**specs, "layers": layers}


def merge_adapters(params: Params, dtype) -> Params:
    """A plain params tree in `dtype` from params with adapters (`with_adapters`): each adapted weight becomes
    W + (alpha / r) A B and quantized weights are dequantized."""
    layers = dict(params["layers"])
    adapters = layers.pop("lora", {})
    merged = {}
    for name, leaf in layers.items():
        weight = dense(leaf, jnp.float32)
        if name in adapters:
            a, b = adapters[name]["a"].astype(jnp.float32), adapters[name]["b"].astype(jnp.float32)
            layers_, rank = b.shape[:2]
            product = a.reshape(layers_, -1, rank) @ b.reshape(layers_, rank, -1)  # [L, inputs, outputs]
            weight = weight + product.reshape(weight.shape)
        merged[name] = weight.astype(dtype)
    return {**{key: leaf.astype(dtype) for key, leaf in params.items() if key != "layers"}, "layers": merged}
