"""Block-wise weight quantization for a frozen base model (QLoRA): int8 and NF4, dequantized where they are used.

A `QuantizedWeight` stands in for a weight leaf of the params tree. Blocks run along the weight's last axis
(`block_size(n)`: 64 values, or the largest divisor of n up to 64), each with its own float32 absmax scale:

    int8  codes int8 [..., n], value = code * absmax / 127 (round to nearest)
    nf4   codes uint8 [..., n / 2], two 4-bit codes per byte (the even position in the low nibble); value =
          NF4_LEVELS[code] * absmax, the level nearest to value / absmax. NF4's 16 levels are the quantiles of a
          normal distribution (Dettmers et al., QLoRA, 2023), so normally distributed weights use them evenly.

Leading axes (the `layers` axis) are kept, so `lax.scan` over layers slices a QuantizedWeight like any leaf and
each layer is dequantized inside the scan: at most one layer's weights exist in full at a time. Unlike
bitsandbytes, the scales are not quantized again ("double quantization"): they add 4 bytes per 64 weights.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# The NF4 data type's levels, as QLoRA / bitsandbytes define them.
NF4_LEVELS = np.asarray([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], np.float32)
MAX_BLOCK = 64


def block_size(n: int) -> int:
    """The quantization block along a last axis of n values: the largest divisor of n up to MAX_BLOCK."""
    return max(size for size in range(1, min(n, MAX_BLOCK) + 1) if n % size == 0)


@struct.dataclass
class QuantizedWeight:
    """A quantized weight: `codes` (layout per `format`, module docstring) and `scales` [..., n / block]."""

    codes: jax.Array
    scales: jax.Array
    format: str = struct.field(pytree_node=False)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes

    def dequantize(self, dtype) -> jax.Array:
        """The weight [..., n] in `dtype`."""
        values = QUANTIZATIONS[self.format].decode(self.codes)  # [..., n] float32, in units of the block absmax
        blocks = values.reshape(*values.shape[:-1], self.scales.shape[-1], -1) * self.scales[..., None]
        return blocks.reshape(values.shape).astype(dtype)


def _block_absmax(weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(weight as [..., blocks, block] float32, each block's absmax [..., blocks], 1 where the block is all 0)."""
    n = weight.shape[-1]
    blocks = weight.astype(jnp.float32).reshape(*weight.shape[:-1], n // block_size(n), block_size(n))
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    return blocks, jnp.where(absmax > 0, absmax, 1.0)


def _encode_int8(units: jax.Array) -> jax.Array:
    return jnp.round(units * 127).astype(jnp.int8)


def _decode_int8(codes: jax.Array) -> jax.Array:
    return codes.astype(jnp.float32) / 127


def _encode_nf4(units: jax.Array) -> jax.Array:
    midpoints = jnp.asarray((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    codes = jnp.searchsorted(midpoints, units).astype(jnp.uint8)  # the nearest level's index
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _decode_nf4(codes: jax.Array) -> jax.Array:
    nibbles = jnp.stack([codes & 15, codes >> 4], axis=-1).reshape(*codes.shape[:-1], -1)
    return jnp.asarray(NF4_LEVELS)[nibbles]


@dataclasses.dataclass(frozen=True)
class Quantization:
    """One format: `encode` maps values in units of their block's absmax ([..., n], in [-1, 1]) to codes,
    `decode` codes back to those units; `bits` per weight, scales aside."""

    encode: Callable[[jax.Array], jax.Array]
    decode: Callable[[jax.Array], jax.Array]
    bits: int


QUANTIZATIONS = {
    "int8": Quantization(_encode_int8, _decode_int8, 8),
    "nf4": Quantization(_encode_nf4, _decode_nf4, 4),
}


def quantize(weight: jax.Array, format: str) -> QuantizedWeight:
    """`weight` [..., n] (n even for nf4) block-wise quantized in `format` (a key of QUANTIZATIONS)."""
    blocks, absmax = _block_absmax(weight)
    units = (blocks / absmax[..., None]).reshape(weight.shape)
    return QuantizedWeight(QUANTIZATIONS[format].encode(units), absmax, format)


def dense(weight: jax.Array | QuantizedWeight, dtype) -> jax.Array:
    """A weight leaf as a plain array in `dtype`, dequantized if it is quantized."""
    if isinstance(weight, QuantizedWeight):
        return weight.dequantize(dtype)
    return weight.astype(dtype)


def quantized_shapes(shape: tuple[int, ...], format: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(codes shape, scales shape) of a weight of `shape` quantized in `format`."""
    n = shape[-1]
    codes = (*shape[:-1], n * QUANTIZATIONS[format].bits // 8)
    return codes, (*shape[:-1], n // block_size(n))

