"""Causal attention through the Pallas splash attention kernel (`model.attention: splash`): TPU's flash attention,
which walks the keys in blocks and never holds a [T, T] score matrix, skipping the blocks that causality masks.

It serves the forward passes without a KV cache (the update, the reference pass, SFT and the sampler's prefill);
decoding one token against the cache keeps the einsum path. Left padding and packed rows are told to the kernel as
segment ids (a token attends to the earlier tokens of its own segment; padding is a segment of its own), so the
mask is never materialised. Sliding windows are refused (the window differs per layer, while a kernel's mask is
fixed when it is built); logit soft-capping is the kernel's own.

On TPU the kernel is compiled by Mosaic; on any other backend it runs in Pallas' interpreter, which computes the
same values slowly: for checking a config on a CPU, not for training there. The kernel is not partitioned by the
compiler, so on a mesh it runs per device through the layout's `sharded` (jax.shard_map over rows and KV heads).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention

# Queries and keys per kernel block; sequences are padded to a multiple of it (the padding is a segment of its own).
BLOCK = 128


def _kernel(groups: int, length: int, soft_cap: float, interpret: bool):
    """The kernel for `groups` query heads sharing one KV head over `length` (a multiple of BLOCK) positions. Made
    while tracing, for each trace: it holds its mask's block tables as arrays of that trace."""
    causal = splash_attention.MultiHeadMask([splash_attention.CausalMask((length, length))] * groups)
    sizes = splash_attention.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK, block_q_dkv=BLOCK,
                                        block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK, block_q_dq=BLOCK,
                                        block_kv_dq=BLOCK)
    return splash_attention.make_splash_mqa_single_device(causal, block_sizes=sizes,
                                                          attn_logits_soft_cap=soft_cap or None, interpret=interpret)


def splash_causal_attention(queries: jax.Array, keys: jax.Array, values: jax.Array, segments: jax.Array,
                            soft_cap: float, sharded) -> jax.Array:
    """softmax(q . k) v over the earlier keys of each query's segment.

    queries [B, T, H, D] (already scaled), keys and values [B, T, K, D] with H a multiple of K; segments [B, T]
    int32 (0 for padding); soft_cap: the logits' soft cap, 0 for none; sharded: (function, logical axes of its
    arguments and result) -> the function run per device (rlreason.models.transformer.Layout.sharded).
    Returns [B, T, H, D] in the queries' dtype; padding positions hold values the caller ignores."""
    batch, length, heads, head_dim = queries.shape
    kv_heads = keys.shape[2]
    padded = -(-length // BLOCK) * BLOCK
    pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - length)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
    # [B, K, G, T, D] queries against [B, K, T, D] keys and values: one MQA kernel call per (row, KV head).
    by_head = jnp.transpose(pad(queries).reshape(batch, padded, kv_heads, heads // kv_heads, head_dim),
                            (0, 2, 3, 1, 4))
    keys, values = (jnp.swapaxes(pad(x), 1, 2) for x in (keys, values))
    kernel = _kernel(heads // kv_heads, padded, float(soft_cap), jax.default_backend() != "tpu")

    def per_device(by_head, keys, values, segments):
        def one(queries, keys, values, segment):
            ids = splash_attention.SegmentIds(q=segment, kv=segment)
            return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(queries, keys, values)
        return jax.vmap(one)(by_head, keys, values, segments)

    heads_axes = ("batch", "kv_heads", None, None, None)
    kv_axes = ("batch", "kv_heads", None, None)
    attended = sharded(per_device, (heads_axes, kv_axes, kv_axes, ("batch", None)), heads_axes)(
        by_head, keys, values, pad(segments))
    return jnp.transpose(attended, (0, 3, 1, 2, 4)).reshape(batch, padded, heads, head_dim)[:, :length]
