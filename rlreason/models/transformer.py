"""A decoder-only transformer of the Llama / Qwen2 / Qwen3 / Gemma / Gemma 2 family, as pure functions.

Parameters are a nested dict of arrays. `param_specs(cfg)` gives, for every leaf, its shape and its
logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `layers`, `norm`); the
sharding rules in `rlreason.parallel` map those names to mesh axes. Layer weights are stacked on a
leading `layers` axis so that the forward pass can `lax.scan` over them.

Tensor layout (B batch, T query length, S key length, E hidden, H heads, K kv heads, D head_dim, M mlp):
  embed      [V, E]            lm_head  [E, V] (untied only)
  q_proj     [L, E, H, D]      k_proj / v_proj [L, E, K, D]      o_proj [L, H, D, E]
  gate_proj / up_proj [L, E, M]                                 down_proj [L, M, E]
  *_norm     [L, E] (q_norm / k_norm: [L, D])                    final_norm [E]

Rotary embeddings use the "rotate half" layout of Hugging Face checkpoints.

A frozen base may hold quantized projections (`rlreason.models.quantize.QuantizedWeight`, dequantized per layer
where used) and LoRA adapters under `layers["lora"]` (`rlreason.models.lora`): `project` adds each adapted
projection's low-rank update.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlreason.config import ModelConfig
from rlreason.models.quantize import dense

Params = dict[str, Any]

# ModelConfig.hidden_act -> the MLP's gate activation.
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda v: jax.nn.gelu(v, approximate=False),  # exact (erf), as transformers' "gelu"
    "gelu_tanh": lambda v: jax.nn.gelu(v, approximate=True),  # "gelu_pytorch_tanh"
}
# ModelConfig.remat_policy -> what the backward pass keeps of a layer's forward activations (jax.checkpoint).
REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer: least memory
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """Shape, logical axis names and initializer of one parameter leaf."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: str  # "normal" | "zeros" | "ones"


class KVCache(NamedTuple):
    """Preallocated keys and values for every layer: each [L, B, S, K, D]."""

    keys: jax.Array
    values: jax.Array


def param_specs(cfg: ModelConfig) -> Params:
    """The parameter tree of `cfg` as ParamSpec leaves (same structure as the params)."""
    L, E, H, K, D, M, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.intermediate_size, cfg.vocab_size)
    norm_init = "zeros" if cfg.norm_scale_plus_one else "ones"
    layer = {
        "attn_norm": ParamSpec((L, E), ("layers", "norm"), norm_init),
        "q_proj": ParamSpec((L, E, H, D), ("layers", "embed", "heads", "head_dim"), "normal"),
        "k_proj": ParamSpec((L, E, K, D), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        "v_proj": ParamSpec((L, E, K, D), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        "o_proj": ParamSpec((L, H, D, E), ("layers", "heads", "head_dim", "embed"), "normal"),
        "mlp_norm": ParamSpec((L, E), ("layers", "norm"), norm_init),
        "gate_proj": ParamSpec((L, E, M), ("layers", "embed", "mlp"), "normal"),
        "up_proj": ParamSpec((L, E, M), ("layers", "embed", "mlp"), "normal"),
        "down_proj": ParamSpec((L, M, E), ("layers", "mlp", "embed"), "normal"),
    }
    if cfg.qkv_bias:
        layer["q_bias"] = ParamSpec((L, H, D), ("layers", "heads", "head_dim"), "zeros")
        layer["k_bias"] = ParamSpec((L, K, D), ("layers", "kv_heads", "head_dim"), "zeros")
        layer["v_bias"] = ParamSpec((L, K, D), ("layers", "kv_heads", "head_dim"), "zeros")
    if cfg.qk_norm:
        layer["q_norm"] = ParamSpec((L, D), ("layers", "norm"), norm_init)
        layer["k_norm"] = ParamSpec((L, D), ("layers", "norm"), norm_init)
    if cfg.post_norms:
        layer["post_attn_norm"] = ParamSpec((L, E), ("layers", "norm"), norm_init)
        layer["post_mlp_norm"] = ParamSpec((L, E), ("layers", "norm"), norm_init)
    specs: Params = {
        "embed": ParamSpec((V, E), ("vocab", "embed"), "normal"),
        "layers": layer,
        "final_norm": ParamSpec((E,), ("norm",), norm_init),
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = ParamSpec((E, V), ("embed", "vocab"), "normal")
    return specs


def _is_spec(node: Any) -> bool:
    return isinstance(node, ParamSpec)


def logical_axes(cfg: ModelConfig) -> Params:
    """The logical axis names of every parameter leaf, as tuples, in the params' tree structure."""
    return jax.tree.map(lambda spec: spec.axes, param_specs(cfg), is_leaf=_is_spec)


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Random parameters (normal(0, init_std) matrices, unit norms, zero biases) in `cfg.param_dtype`.

    Pure and jit-able: under `jax.jit(..., out_shardings=...)` every leaf is created already sharded.
    """
    specs = param_specs(cfg)
    leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
    keys = jax.random.split(rng, len(leaves))
    dtype = jnp.dtype(cfg.param_dtype)

    def make(spec: ParamSpec, key: jax.Array) -> jax.Array:
        if spec.init == "zeros":
            return jnp.zeros(spec.shape, dtype)
        if spec.init == "ones":
            return jnp.ones(spec.shape, dtype)
        return (cfg.init_std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)

    return jax.tree.unflatten(treedef, [make(spec, key) for spec, key in zip(leaves, keys)])


def count_params(params: Params) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def init_cache(cfg: ModelConfig, batch_size: int, max_length: int) -> KVCache:
    shape = (cfg.num_layers, batch_size, max_length, cfg.num_kv_heads, cfg.head_dim)
    zeros = jnp.zeros(shape, jnp.dtype(cfg.dtype))
    return KVCache(zeros, zeros)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


def rms_norm(x: jax.Array, scale: jax.Array, cfg: ModelConfig) -> jax.Array:
    """RMSNorm over the last axis, computed in float32."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.rms_norm_eps)
    scale = scale.astype(jnp.float32)
    if cfg.norm_scale_plus_one:
        scale = 1.0 + scale
    return (normed * scale).astype(x.dtype)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Applies rotary embeddings. x: [B, T, N, D]; positions: [B, T] int."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    return cap * jnp.tanh(x / cap) if cap > 0 else x


def layer_windows(cfg: ModelConfig) -> np.ndarray:
    """Per-layer attention window in tokens ([L] int32); 0 means global attention."""
    windows = np.zeros(cfg.num_layers, np.int32)
    if cfg.sliding_window > 0:
        for layer in range(cfg.num_layers):
            is_global = cfg.sliding_window_pattern > 0 and (layer + 1) % cfg.sliding_window_pattern == 0
            windows[layer] = 0 if is_global else cfg.sliding_window
    return windows


def attention_mask(query_slots: jax.Array, key_valid: jax.Array, window: jax.Array) -> jax.Array:
    """Which keys each query may attend to: [B, T, S] bool.

    query_slots: [T] slot index of each query in the key sequence; key_valid: [B, S] bool (False for padding
    and for cache slots not written yet); window: scalar int, 0 for global. Causality and windows are taken
    in slot space, which equals position space because each row's real tokens occupy contiguous slots.
    """
    key_slots = jnp.arange(key_valid.shape[1])
    distance = query_slots[:, None] - key_slots[None, :]  # [T, S]
    allowed = distance >= 0
    allowed &= (window <= 0) | (distance < window)
    return allowed[None] & key_valid[:, None, :]


def project(layer: Params, name: str, x: jax.Array, equation: str, dtype) -> jax.Array:
    """x times the layer's weight `name` by the einsum `equation` ("<x axes>,<weight axes>-><out axes>"), plus
    the LoRA update x A B when the layer has adapters for it (`layer["lora"][name]`: A [<contracted axes>, r],
    B [r, <weight's other axes>], B already scaled by alpha / r). The low-rank path never forms the weight-sized
    product A B: it costs r (inputs + outputs) per row."""
    out = jnp.einsum(equation, x, dense(layer[name], dtype))
    adapter = layer.get("lora", {}).get(name)
    if adapter is None:
        return out
    operands, out_axes = equation.split("->")
    x_axes, weight_axes = operands.split(",")
    contracted = "".join(axis for axis in weight_axes if axis in x_axes)
    kept = "".join(axis for axis in x_axes if axis not in weight_axes)
    produced = "".join(axis for axis in weight_axes if axis not in x_axes)
    low_rank = jnp.einsum(f"{x_axes},{contracted}r->{kept}r", x, adapter["a"].astype(dtype))
    return out + jnp.einsum(f"{kept}r,r{produced}->{out_axes}", low_rank, adapter["b"].astype(dtype))


def _attention(layer: Params, x: jax.Array, positions: jax.Array, mask: jax.Array, cfg: ModelConfig,
               past_keys: jax.Array | None, past_values: jax.Array | None, cache_index: jax.Array | int):
    """Grouped-query attention. x: [B, T, E]; past_keys / past_values: this layer's cache [B, S, K, D] or None.

    Returns (output [B, T, E], the new tokens' keys and values [B, T, K, D]). With a cache, the queries attend
    to the cache with the new keys placed at `cache_index`; the caller writes them into the cache.
    """
    dtype = jnp.dtype(cfg.dtype)
    queries = project(layer, "q_proj", x, "bte,ehd->bthd", dtype)
    keys = project(layer, "k_proj", x, "bte,ekd->btkd", dtype)
    values = project(layer, "v_proj", x, "bte,ekd->btkd", dtype)
    if cfg.qkv_bias:
        queries = queries + layer["q_bias"].astype(dtype)
        keys = keys + layer["k_bias"].astype(dtype)
        values = values + layer["v_bias"].astype(dtype)
    if cfg.qk_norm:
        queries = rms_norm(queries, layer["q_norm"], cfg)
        keys = rms_norm(keys, layer["k_norm"], cfg)
    queries = rotary(queries, positions, cfg.rope_theta)
    keys = rotary(keys, positions, cfg.rope_theta)
    new_keys, new_values = keys, values
    if past_keys is not None:
        start = (0, cache_index, 0, 0)
        keys = jax.lax.dynamic_update_slice(past_keys, keys.astype(past_keys.dtype), start).astype(dtype)
        values = jax.lax.dynamic_update_slice(past_values, values.astype(past_values.dtype), start).astype(dtype)

    batch, length, heads, head_dim = queries.shape
    scale = (cfg.query_pre_attn_scalar or head_dim) ** -0.5
    if cfg.attention != "einsum":
        attended = jax.nn.dot_product_attention(queries, keys, values, mask=mask[:, None], scale=scale,
                                                implementation=cfg.attention)
        return project(layer, "o_proj", attended, "bthd,hde->bte", dtype), new_keys, new_values
    groups = heads // cfg.num_kv_heads
    queries = queries.reshape(batch, length, cfg.num_kv_heads, groups, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", queries, keys, preferred_element_type=jnp.float32) * scale
    logits = softcap(logits, cfg.attn_logit_softcap)
    logits = jnp.where(mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    attended = jnp.einsum("bkgts,bskd->btkgd", weights, values).reshape(batch, length, heads, head_dim)
    return project(layer, "o_proj", attended, "bthd,hde->bte", dtype), new_keys, new_values


def _mlp(layer: Params, x: jax.Array, cfg: ModelConfig) -> jax.Array:
    dtype = jnp.dtype(cfg.dtype)
    # Plain 2-D matmuls over the B*T rows: the weight gradients then contract one axis, which XLA's CPU backend
    # runs about 30% faster than the two-axis ("bt") contraction of the einsum form.
    rows = x.reshape(-1, x.shape[-1])
    gate = project(layer, "gate_proj", rows, "ne,em->nm", dtype)
    up = project(layer, "up_proj", rows, "ne,em->nm", dtype)
    activation = ACTIVATIONS[cfg.hidden_act]
    return project(layer, "down_proj", activation(gate) * up, "nm,me->ne", dtype).reshape(x.shape)


def _block(layer: Params, x: jax.Array, positions: jax.Array, mask: jax.Array, cfg: ModelConfig,
           past_keys, past_values, cache_index):
    """One pre-norm transformer block (with Gemma 2's extra post-norms when configured).

    Returns (x [B, T, E], the new tokens' keys and values [B, T, K, D])."""
    attended, new_keys, new_values = _attention(
        layer, rms_norm(x, layer["attn_norm"], cfg), positions, mask, cfg, past_keys, past_values, cache_index)
    if cfg.post_norms:
        attended = rms_norm(attended, layer["post_attn_norm"], cfg)
    x = x + attended
    mlp_out = _mlp(layer, rms_norm(x, layer["mlp_norm"], cfg), cfg)
    if cfg.post_norms:
        mlp_out = rms_norm(mlp_out, layer["post_mlp_norm"], cfg)
    return x + mlp_out, new_keys, new_values


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


def embed_tokens(params: Params, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    x = jnp.take(params["embed"], tokens, axis=0).astype(jnp.dtype(cfg.dtype))
    if cfg.embed_scale:
        # Gemma rounds the normalizer to the compute dtype before multiplying.
        x = x * jnp.asarray(math.sqrt(cfg.hidden_size), x.dtype)
    return x


def unembed(params: Params, hidden: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Final norm and output projection: [B, T, E] -> float32 logits [B, T, V]."""
    hidden = rms_norm(hidden, params["final_norm"], cfg)
    dtype = jnp.dtype(cfg.dtype)
    if cfg.tie_embeddings:
        logits = jnp.einsum("bte,ve->btv", hidden, params["embed"].astype(dtype),
                            preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("bte,ev->btv", hidden, params["lm_head"].astype(dtype),
                            preferred_element_type=jnp.float32)
    return softcap(logits, cfg.final_logit_softcap)


def forward_hidden(params: Params, tokens: jax.Array, positions: jax.Array, key_valid: jax.Array,
                   cfg: ModelConfig, cache: KVCache | None = None, cache_index: jax.Array | int = 0,
                   segment_ids: jax.Array | None = None):
    """Runs the blocks and returns (hidden [B, T, E] before the final norm, updated cache or None).

    tokens, positions: [B, T] int32. key_valid: [B, S] bool, which key slots hold real tokens (S = T without a
    cache; S = cache length with one, counting the T new slots at `cache_index`). segment_ids: [B, T] int32 or
    None, for packed rows without a cache: a token attends only to earlier tokens of its own segment (give each
    segment positions that start at 0, as an unpacked row would have).
    """
    if segment_ids is not None and cache is not None:
        raise ValueError("segment_ids (packed rows) work without a KV cache only")
    x = embed_tokens(params, tokens, cfg)
    query_slots = cache_index + jnp.arange(tokens.shape[1])
    windows = jnp.asarray(layer_windows(cfg))
    use_cache = cache is not None
    same_segment = None if segment_ids is None else segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, T]

    def block(x, layer, window, past_keys, past_values):
        mask = attention_mask(query_slots, key_valid, window)
        if same_segment is not None:
            mask &= same_segment
        return _block(layer, x, positions, mask, cfg, past_keys, past_values, cache_index)

    if cfg.remat:
        block = jax.checkpoint(block, policy=REMAT_POLICIES[cfg.remat_policy])

    # The cache is only read inside the layers; each layer hands back its new keys and values and one update
    # writes all of them, so a decode step never copies the whole cache.
    past = (cache.keys, cache.values) if use_cache else (None, None)
    if cfg.scan_layers:
        def scan_body(x, scanned):
            layer, window, past_keys, past_values = scanned
            x, new_keys, new_values = block(x, layer, window, past_keys, past_values)
            return x, ((new_keys, new_values) if use_cache else None)

        x, new_entries = jax.lax.scan(scan_body, x, (params["layers"], windows, *past))
    else:
        entries = []
        for index in range(cfg.num_layers):
            layer = jax.tree.map(lambda leaf: leaf[index], params["layers"])
            x, new_keys, new_values = block(x, layer, windows[index], *(p[index] if use_cache else None for p in past))
            entries.append((new_keys, new_values))
        new_entries = jax.tree.map(lambda *layers: jnp.stack(layers), *entries) if use_cache else None
    if not use_cache:
        return x, None
    start = (0, 0, cache_index, 0, 0)
    new_keys, new_values = new_entries  # [L, B, T, K, D]
    return x, KVCache(jax.lax.dynamic_update_slice(cache.keys, new_keys.astype(cache.keys.dtype), start),
                      jax.lax.dynamic_update_slice(cache.values, new_values.astype(cache.values.dtype), start))


def forward(params: Params, tokens: jax.Array, positions: jax.Array, key_valid: jax.Array, cfg: ModelConfig,
            cache: KVCache | None = None, cache_index: jax.Array | int = 0, segment_ids: jax.Array | None = None):
    """Logits [B, T, V] (float32) and the updated cache (None without one). Arguments as `forward_hidden`."""
    hidden, cache = forward_hidden(params, tokens, positions, key_valid, cfg, cache, cache_index, segment_ids)
    return unembed(params, hidden, cfg), cache


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Rotary positions for a left- or right-padded batch: the count of real tokens before each slot. [B, T]."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
