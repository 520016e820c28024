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

import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlreason.config import ModelConfig
from rlreason.models.quantize import QuantizedWeight, dense
from rlreason.models.splash import splash_causal_attention

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


class Layout(NamedTuple):
    """How a forward pass lays its arrays out over devices (sharding constraints), applied while a caller traces
    under `laid_out`; the default leaves placement to the compiler.

    rows: arrays (or trees of them) that lead with rows [B, ...]: the residual stream [B, T, E] after the embedding
      and after each block, and the caller's own rows (the trainer splits them over devices like its rollout
      rows: on a mesh whose fsdp axis splits both the rows and the weights' hidden size, the compiler would
      otherwise be free to gather rows instead of weights).
    gathered: (weight, its logical axes) -> the weight as a row-split computation uses it (the embedding table,
      whose lookup the compiler would otherwise do for every device's rows on each device's slice of the table).
    sharded: (function, the logical axes of each argument, those of its result; None for an axis kept whole) ->
      the function run on each device's block of its arguments (jax.shard_map), for a kernel the compiler cannot
      split (the splash attention kernel, rlreason.models.splash).
    """

    rows: Callable[[Any], Any] = lambda x: x
    gathered: Callable[[jax.Array, tuple[str, ...]], jax.Array] = lambda weight, axes: weight
    sharded: Callable[[Callable, tuple, tuple], Callable] = lambda function, in_axes, out_axes: function


_LAYOUT: contextvars.ContextVar[Layout] = contextvars.ContextVar("layout", default=Layout())


def laid_out(function: Callable, arrays: Layout) -> Callable:
    """`function`, whose forward passes lay their arrays out by `arrays` whenever it is traced. Wrap a function
    with it before `jax.jit`: the layout is fixed with the function, where a layout read from the context of a
    later call would not be part of the jit cache's key."""
    @functools.wraps(function)
    def traced(*args, **kwargs):
        token = _LAYOUT.set(arrays)
        try:
            return function(*args, **kwargs)
        finally:
            _LAYOUT.reset(token)
    return traced


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """Shape, logical axis names and initializer of one parameter leaf."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: str  # "normal" | "zeros" | "ones"


def cache_layout(keys: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values [B, T, K, D] (or [L, B, T, K, D]) in the cache's layout: keys [..., K, D, T], values
    [..., K, T, D]."""
    return jnp.moveaxis(keys, -3, -1), jnp.swapaxes(values, -3, -2)


class KVCache(NamedTuple):
    """Preallocated keys [L, B, K, D, S] and values [L, B, K, S, D] for every layer, or tuples of L [B, K, D, S] and
    [B, K, S, D] arrays (`unstack_cache`, for an unrolled forward pass: each layer's cache is then its own buffer,
    read and written in place by a decode step).

    Per (row, kv head) a decode step's scores are queries [G, D] times keys [D, S] and its output the weights
    [G, S] times values [S, D]: both plain matmuls over the cache as it lies, with no transpose per step.
    """

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
    shape = (cfg.num_layers, batch_size, cfg.num_kv_heads, max_length, cfg.head_dim)
    values = jnp.zeros(shape, jnp.dtype(cfg.dtype))
    return KVCache(jnp.swapaxes(values, -2, -1), values)


def extend_cache(cache: KVCache, slots: int) -> KVCache:
    """`cache` with `slots` empty slots appended after its last (stacked or per-layer, in the cache's layout)."""
    def pad(array: jax.Array, axis: int) -> jax.Array:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, slots)
        return jnp.pad(array, widths)
    return KVCache(jax.tree.map(lambda keys: pad(keys, -1), cache.keys),
                   jax.tree.map(lambda values: pad(values, -2), cache.values))


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


def attention_mask(query_slots: jax.Array, key_valid: jax.Array, window: jax.Array,
                   key_slots: jax.Array | None = None) -> jax.Array:
    """Which keys each query may attend to: [B, T, S] bool.

    query_slots: [T] slot index of each query in the key sequence; key_valid: [B, S] bool (False for padding
    and for cache slots not written yet); window: scalar int, 0 for global; key_slots: [S] slot index of each
    key (default 0 .. S-1). Causality and windows are taken in slot space, which equals position space because
    each row's real tokens occupy contiguous slots.
    """
    key_slots = jnp.arange(key_valid.shape[1]) if key_slots is None else key_slots
    distance = query_slots[:, None] - key_slots[None, :]  # [T, S]
    allowed = distance >= 0
    allowed &= (window <= 0) | (distance < window)
    return allowed[None] & key_valid[:, None, :]


def _einsum_f32_accumulated(equation: str, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.einsum(equation, x, y, preferred_element_type=jnp.float32).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def matmul(equation: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """einsum of two arrays of one dtype, accumulated in float32 and returned in their dtype. For bfloat16 that is
    the product XLA's CPU backend runs on bfloat16 kernels (AMX where the CPU has it); asked for a bfloat16 result
    it converts both operands to float32 first. Every axis of an operand appears in the other or in the output.

    The backward pass takes the incoming gradient in the operands' dtype, so its two products are bfloat16 ones
    too (autodiff of the float32-accumulated einsum would hand them a float32 gradient, and float32 operands)."""
    return _einsum_f32_accumulated(equation, x, y)


def _matmul_forward(equation, x, y):
    return _einsum_f32_accumulated(equation, x, y), (x, y)


def _matmul_backward(equation, operands, gradient):
    x, y = operands
    (x_axes, y_axes), out_axes = equation.split("->")[0].split(","), equation.split("->")[1]
    gradient = gradient.astype(x.dtype)
    return (_einsum_f32_accumulated(f"{out_axes},{y_axes}->{x_axes}", gradient, y),
            _einsum_f32_accumulated(f"{x_axes},{out_axes}->{y_axes}", x, gradient).astype(y.dtype))


matmul.defvjp(_matmul_forward, _matmul_backward)


def _silu_times(gate: jax.Array, up: jax.Array) -> jax.Array:
    return jax.nn.silu(gate) * up


@jax.custom_vjp
def silu_gated(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up elementwise, in the operands' dtype: a SiLU MLP's hidden values ([rows, intermediate]).

    Its gradient is written out, one expression per operand, which XLA's CPU backend fuses into one kernel;
    autodiff of the expression leaves the sigmoid's and the products' pieces as kernels of their own over the
    whole [rows, intermediate] (their cost: docs/benchmarks.md). The gradient is computed in float32 and returned
    in each operand's dtype."""
    return _silu_times(gate, up)


def _silu_gated_forward(gate, up):
    return _silu_times(gate, up), (gate, up)


def _silu_gated_backward(operands, gradient):
    gate, up = operands
    gate32, up32, gradient32 = (x.astype(jnp.float32) for x in (gate, up, gradient))
    sigmoid = jax.nn.sigmoid(gate32)
    silu = gate32 * sigmoid
    # d silu(g) / dg = sigmoid(g) + g sigmoid(g) (1 - sigmoid(g))
    return ((gradient32 * up32 * (sigmoid + silu * (1 - sigmoid))).astype(gate.dtype),
            (gradient32 * silu).astype(up.dtype))


silu_gated.defvjp(_silu_gated_forward, _silu_gated_backward)

# ModelConfig.hidden_act -> the MLP's activation(gate) * up: SiLU's with its gradient written out (silu_gated),
# the others differentiated by JAX.
GATED_ACTIVATIONS = {**{name: (lambda gate, up, activation=activation: activation(gate) * up)
                        for name, activation in ACTIVATIONS.items()}, "silu": silu_gated}


# Each projection weight's einsum with its input: "<input axes>,<weight axes>-><output axes>". Every weight leads
# with the axes it contracts, which trail its input.
PROJECTIONS = {"q_proj": "bte,ehd->bthd", "k_proj": "bte,ekd->btkd", "v_proj": "bte,ekd->btkd",
               "o_proj": "bthd,hde->bte", "gate_proj": "ne,em->nm", "up_proj": "ne,em->nm", "down_proj": "nm,me->ne"}


class OutputMajor(NamedTuple):
    """A projection weight transposed to its produced axes first and its contracted axes last (the [out, in] of
    torch's nn.Linear), in the compute dtype (`decode_weights`)."""

    weight: jax.Array


def _projection_axes(name: str) -> tuple[str, str, str, str]:
    """Projection `name`'s axes: (kept: the input's others, contracted, produced: the weight's others, output)."""
    operands, out_axes = PROJECTIONS[name].split("->")
    x_axes, weight_axes = operands.split(",")
    contracted = "".join(axis for axis in weight_axes if axis in x_axes)
    return (x_axes.removesuffix(contracted), contracted, weight_axes.removeprefix(contracted), out_axes)


def project(layer: Params, name: str, x: jax.Array, dtype) -> jax.Array:
    """x times the layer's weight `name` by its einsum (PROJECTIONS: "<x axes>,<weight axes>-><out axes>"), plus
    the LoRA update x A B when the layer has adapters for it (`layer["lora"][name]`: A [<contracted axes>, r],
    B [r, <weight's other axes>], B already scaled by alpha / r). The low-rank path never forms the weight-sized
    product A B: it costs r (inputs + outputs) per row. The weight may be OutputMajor.

    Several contracted axes (the output projection's heads and head_dim) are merged into one, so the product is a
    plain matmul: XLA's CPU backend otherwise reorders them by copying the weight on every call, in every decode
    step."""
    kept, contracted, produced, out_axes = _projection_axes(name)
    if isinstance(stored := layer[name], OutputMajor):
        weight, leading = stored.weight, False
    else:
        weight, leading = dense(stored, dtype), True
    # The contracted axes, trailing in x and together in the weight, merge into one ("f").
    x = x.reshape(*x.shape[:-len(contracted)], -1)
    weight = weight.reshape((-1, *weight.shape[len(contracted):]) if leading
                            else (*weight.shape[:-len(contracted)], -1))
    out = matmul(f"{kept}f,{'f' + produced if leading else produced + 'f'}->{out_axes}", x, weight)
    if (adapter := layer.get("lora", {}).get(name)) is None:
        return out
    adapter_a = adapter["a"].astype(dtype).reshape(-1, adapter["a"].shape[-1])
    low_rank = matmul(f"{kept}f,fr->{kept}r", x, adapter_a)
    return out + matmul(f"{kept}r,r{produced}->{out_axes}", low_rank, adapter["b"].astype(dtype))


def _attention(layer: Params, x: jax.Array, positions: jax.Array, mask: jax.Array, cfg: ModelConfig,
               layer_cache: tuple[jax.Array, jax.Array] | None, cache_index: jax.Array | int,
               segments: jax.Array | None = None):
    """Grouped-query attention. x: [B, T, E]; mask: [B, T, S] (see attention_mask); segments: [B, T] int32, the
    same mask told as segments for the splash kernel (a causal one without windows; 0 for padding).

    Without `layer_cache` the queries attend to the T new tokens (S = T). With it (this layer's cached keys
    [B, K, D, S] and values [B, K, S, D]) the new keys and values are first written at slot `cache_index` and the
    queries attend to the whole cache, read as it lies (no transpose of the cache per decode step).
    Returns (output [B, T, E], the new tokens' keys and values [B, T, K, D], the updated layer cache or None).
    """
    dtype = jnp.dtype(cfg.dtype)
    queries = project(layer, "q_proj", x, dtype)
    keys = project(layer, "k_proj", x, dtype)
    values = project(layer, "v_proj", x, dtype)
    if cfg.qkv_bias:
        queries = queries + layer["q_bias"].astype(dtype)
        keys = keys + layer["k_bias"].astype(dtype)
        values = values + layer["v_bias"].astype(dtype)
    if cfg.qk_norm:
        queries = rms_norm(queries, layer["q_norm"], cfg)
        keys = rms_norm(keys, layer["k_norm"], cfg)
    queries = rotary(queries, positions, cfg.rope_theta)
    keys = rotary(keys, positions, cfg.rope_theta)

    batch, length, heads, head_dim = queries.shape
    scale = (cfg.query_pre_attn_scalar or head_dim) ** -0.5
    if layer_cache is None:
        if cfg.attention == "splash":
            attended = splash_causal_attention(queries * jnp.asarray(scale, dtype), keys, values, segments,
                                               cfg.attn_logit_softcap, _LAYOUT.get().sharded)
            return project(layer, "o_proj", attended, dtype), keys, values, None
        if cfg.attention != "einsum":
            attended = jax.nn.dot_product_attention(queries, keys, values, mask=mask[:, None], scale=scale,
                                                    implementation=cfg.attention)
            return project(layer, "o_proj", attended, dtype), keys, values, None
        attend_keys, attend_values = cache_layout(keys, values)
    else:
        new_keys, new_values = cache_layout(keys, values)
        attend_keys = jax.lax.dynamic_update_slice(layer_cache[0], new_keys.astype(layer_cache[0].dtype),
                                                   (0, 0, 0, cache_index))
        attend_values = jax.lax.dynamic_update_slice(layer_cache[1], new_values.astype(layer_cache[1].dtype),
                                                     (0, 0, cache_index, 0))
        layer_cache = (attend_keys, attend_values)
    groups = heads // cfg.num_kv_heads
    by_head = jnp.transpose(queries.reshape(batch, length, cfg.num_kv_heads, groups, head_dim), (0, 2, 3, 1, 4))
    attend_keys, attend_values = attend_keys.astype(dtype), attend_values.astype(dtype)
    if layer_cache is None:  # the mask is causal (a query's keys end at its own slot): a block needs keys to its end
        spans = [(start, end, end) for start, end in query_blocks(length, cfg.attention_block_size)]
    else:
        spans = [(0, length, mask.shape[-1])]
    attended = jnp.concatenate(
        [_attend_block(by_head[:, :, :, start:end], attend_keys[..., :key_end], attend_values[:, :, :key_end],
                       mask[:, start:end, :key_end], scale, cfg.attn_logit_softcap) for start, end, key_end in spans],
        axis=3)
    attended = jnp.transpose(attended, (0, 3, 1, 2, 4)).reshape(batch, length, heads, head_dim)
    return project(layer, "o_proj", attended, dtype), keys, values, layer_cache


def query_blocks(length: int, block_size: int) -> list[tuple[int, int]]:
    """(start, end) of each block of `block_size` consecutive query positions of `length` (the last block may be
    shorter); one block of all of them for a block_size of 0."""
    step = block_size if block_size > 0 else length
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def _attend_block(queries: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array, scale: float,
                  logit_softcap: float) -> jax.Array:
    """softmax(queries . keys * scale, masked) . values for each kv head's G query heads. queries: [B, K, G, T, D];
    keys: [B, K, D, S]; values: [B, K, S, D]; mask: [B, T, S]. Returns [B, K, G, T, D]."""
    batch, kv_heads, groups, length, head_dim = queries.shape
    # Queries as [B, K, G * T, D]: both products are then dots batched over (row, kv head) in the keys' order.
    by_head = queries.reshape(batch, kv_heads, groups * length, head_dim)
    logits = jnp.einsum("bkqd,bkds->bkqs", by_head, keys, preferred_element_type=jnp.float32)
    logits = softcap(logits * scale, logit_softcap)
    key_mask = jnp.broadcast_to(mask[:, None, None], (batch, 1, groups, length, mask.shape[-1]))
    logits = jnp.where(key_mask.reshape(batch, 1, groups * length, -1), logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(queries.dtype)
    return matmul("bkqs,bksd->bkqd", weights, values).reshape(batch, kv_heads, groups, length, head_dim)


def _mlp(layer: Params, x: jax.Array, cfg: ModelConfig) -> jax.Array:
    dtype = jnp.dtype(cfg.dtype)
    # Plain 2-D matmuls over the B*T rows: the weight gradients then contract one axis, which XLA's CPU backend
    # runs about 30% faster than the two-axis ("bt") contraction of the einsum form.
    rows = x.reshape(-1, x.shape[-1])
    gate = project(layer, "gate_proj", rows, dtype)
    up = project(layer, "up_proj", rows, dtype)
    return project(layer, "down_proj", GATED_ACTIVATIONS[cfg.hidden_act](gate, up), dtype).reshape(x.shape)


def _block(layer: Params, x: jax.Array, positions: jax.Array, mask: jax.Array, cfg: ModelConfig,
           layer_cache, cache_index, segments: jax.Array | None):
    """One pre-norm transformer block (with Gemma 2's extra post-norms when configured); arguments as _attention.

    Returns (x [B, T, E], the new tokens' keys and values [B, T, K, D], the updated layer cache or None)."""
    attended, new_keys, new_values, layer_cache = _attention(
        layer, rms_norm(x, layer["attn_norm"], cfg), positions, mask, cfg, layer_cache, cache_index, segments)
    if cfg.post_norms:
        attended = rms_norm(attended, layer["post_attn_norm"], cfg)
    x = x + attended
    mlp_out = _mlp(layer, rms_norm(x, layer["mlp_norm"], cfg), cfg)
    if cfg.post_norms:
        mlp_out = rms_norm(mlp_out, layer["post_mlp_norm"], cfg)
    return x + mlp_out, new_keys, new_values, layer_cache


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


def embed_tokens(params: Params, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    table = _LAYOUT.get().gathered(params["embed"], ("vocab", "embed"))
    x = jnp.take(table, tokens, axis=0).astype(jnp.dtype(cfg.dtype))
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


def compute_weights(params: Params, cfg: ModelConfig) -> Params:
    """`params` with what the forward pass casts to the compute dtype on use (matmul weights, biases, embeddings,
    LoRA adapters) cast once: a decode loop then reads bfloat16 weights per token, not float32 ones it converts.
    Norm scales, which the forward pass reads in float32, and quantized weights stay as they are."""
    dtype = jnp.dtype(cfg.dtype)

    def cast(path, leaf):
        is_norm = any("norm" in str(getattr(entry, "key", "")) for entry in path)
        return leaf if is_norm or isinstance(leaf, QuantizedWeight) else leaf.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, params, is_leaf=lambda node: isinstance(node, QuantizedWeight))


def decode_weights(params: Params, cfg: ModelConfig) -> Params:
    """The weights a decode loop reads on every token, prepared once per call: in the compute dtype
    (compute_weights), the layers unstacked (a tuple of L per-layer trees, which an unrolled forward pass,
    scan_layers false, uses as they are, where slicing stacked weights would copy them every step), and, in a
    16-bit compute dtype, each full-precision projection weight OutputMajor.

    Why output-major in 16 bits only: a decode step multiplies each weight by a few rows, and XLA's CPU library
    runs that bfloat16 product faster with the contracted axis contiguous (SmolLM2-135M decoding 8 rows: 41 ms a
    token instead of 59, Intel Xeon, 2026-12-07), while the float32 product is no faster that way and the
    transpose would be an extra copy of every weight (the 16-bit cast copies them anyway)."""
    params = compute_weights(params, cfg)
    layers = layer_list(params)
    if jnp.dtype(cfg.dtype).itemsize == 2:
        def transposed(name, weight):
            if name not in PROJECTIONS or isinstance(weight, QuantizedWeight):
                return weight
            contracted = len(_projection_axes(name)[1])  # the weight's leading axes
            return OutputMajor(jnp.transpose(weight, (*range(contracted, weight.ndim), *range(contracted))))

        layers = [{name: transposed(name, weight) for name, weight in layer.items()} for layer in layers]
    return {**params, "layers": tuple(layers)}


def unstack_cache(cache: KVCache) -> KVCache:
    """A stacked cache as per-layer arrays (see KVCache)."""
    return KVCache(*(tuple(stacked[index] for index in range(stacked.shape[0])) for stacked in cache))


def layer_list(params: Params) -> list[Params] | tuple[Params, ...]:
    """The per-layer parameter trees of `params`, stacked or unstacked (`decode_weights`)."""
    if isinstance(params["layers"], tuple):
        return params["layers"]
    return [jax.tree.map(lambda leaf: leaf[index], params["layers"])
            for index in range(jax.tree.leaves(params["layers"])[0].shape[0])]


def forward_hidden(params: Params, tokens: jax.Array, positions: jax.Array, key_valid: jax.Array,
                   cfg: ModelConfig, cache: KVCache | None = None, cache_index: jax.Array | int = 0,
                   segment_ids: jax.Array | None = None):
    """Runs the blocks and returns (hidden [B, T, E] before the final norm, updated cache or None).

    tokens, positions: [B, T] int32. key_valid: [B, S] bool, which key slots hold real tokens (S = T without a
    cache; S = cache length with one, counting the T new slots at `cache_index`). With a cache the T tokens'
    keys and values are written at `cache_index`, and they attend to the cache's slots up to their own; a
    cache_index of the Python int 0 (a prefill, which can see no earlier slot) attends among the T tokens only
    and fills a stacked cache. The unrolled form (scan_layers false) takes stacked or unstacked params, and a
    decode step stacked or unstacked caches (`decode_weights`, `unstack_cache`); the scanned form takes stacked
    ones. segment_ids: [B, T] int32 or None, for packed rows
    without a cache: a token attends only to earlier tokens of its own segment (give each segment positions that
    start at 0, as an unpacked row would have).
    """
    if segment_ids is not None and cache is not None:
        raise ValueError("segment_ids (packed rows) work without a KV cache only")
    rows = _LAYOUT.get().rows
    x = rows(embed_tokens(params, tokens, cfg))
    length = tokens.shape[1]
    windows = jnp.asarray(layer_windows(cfg))
    prefill = cache is not None and isinstance(cache_index, int) and cache_index == 0
    decode = cache is not None and not prefill
    # Queries see the whole cache when decoding; otherwise only the T new tokens.
    query_slots = cache_index + jnp.arange(length)
    visible = key_valid if decode else key_valid[:, :length]
    same_segment = None if segment_ids is None else segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, T]
    # The splash kernel takes the padding and the packed rows' segments as segment ids instead of a mask.
    segments = (jnp.where(visible, 1 if segment_ids is None else segment_ids, 0).astype(jnp.int32)
                if cfg.attention == "splash" and not decode else None)

    def block(x, layer, window, layer_cache):
        mask = attention_mask(query_slots, visible, window)
        if same_segment is not None:
            mask &= same_segment
        x, new_keys, new_values, layer_cache = _block(layer, x, positions, mask, cfg, layer_cache, cache_index,
                                                      segments)
        return rows(x), new_keys, new_values, layer_cache

    if cfg.remat:
        block = jax.checkpoint(block, policy=REMAT_POLICIES[cfg.remat_policy])

    if cfg.scan_layers:
        def scan_body(x, scanned):
            layer, window, *layer_cache = scanned
            x, new_keys, new_values, layer_cache = block(x, layer, window, tuple(layer_cache) if decode else None)
            return x, (layer_cache if decode else (new_keys, new_values) if prefill else None)

        x, produced = jax.lax.scan(scan_body, x, (params["layers"], windows, *(cache if decode else ())))
    else:
        outputs = []
        for index, layer in enumerate(layer_list(params)):
            layer_cache = (cache.keys[index], cache.values[index]) if decode else None
            x, new_keys, new_values, layer_cache = block(x, layer, windows[index], layer_cache)
            outputs.append(layer_cache if decode else (new_keys, new_values))
        produced = None if cache is None else (tuple(zip(*outputs)) if decode else
                                                jax.tree.map(lambda *layers: jnp.stack(layers), *outputs))
    if cache is None:
        return x, None
    if decode:  # each layer wrote its own cache
        if isinstance(cache.keys, tuple) or cfg.scan_layers:
            return x, KVCache(*produced)
        return x, KVCache(*(jnp.stack(layers) for layers in produced))
    # A prefill: the new entries ([L, B, T, K, D] each) go into slots 0 .. T-1.
    return x, KVCache(*(jax.lax.dynamic_update_slice(stored, new.astype(stored.dtype), (0,) * stored.ndim)
                        for stored, new in zip(cache, cache_layout(*produced))))


def prefill_for_rows(params: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array, cfg: ModelConfig,
                     cache_length: int, rows_per_prompt: int) -> tuple[jax.Array, KVCache]:
    """Runs each left-padded prompt [P, Tp] once, into a cache of `cache_length` slots, and repeats its cache
    entries for the `rows_per_prompt` consecutive rows that continue it (a GRPO group, or its share of a
    micro-batch). Returns (the prompts' hidden states [P, Tp, E], the cache with P * rows_per_prompt rows)."""
    prompt_valid = prompt_mask.astype(bool)
    hidden, cache = forward_hidden(params, prompt_tokens, positions_from_mask(prompt_valid), prompt_valid, cfg,
                                   init_cache(cfg, prompt_tokens.shape[0], cache_length), 0)
    return hidden, KVCache(*(jnp.repeat(stored, rows_per_prompt, axis=1) for stored in cache))


def forward(params: Params, tokens: jax.Array, positions: jax.Array, key_valid: jax.Array, cfg: ModelConfig,
            cache: KVCache | None = None, cache_index: jax.Array | int = 0, segment_ids: jax.Array | None = None):
    """Logits [B, T, V] (float32) and the updated cache (None without one). Arguments as `forward_hidden`."""
    hidden, cache = forward_hidden(params, tokens, positions, key_valid, cfg, cache, cache_index, segment_ids)
    return unembed(params, hidden, cfg), cache


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Rotary positions for a left- or right-padded batch: the count of real tokens before each slot. [B, T]."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
