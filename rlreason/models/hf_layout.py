"""How each rlreason parameter leaf is laid out in a Hugging Face tensor, both ways.

HF stores linear layers as torch `[out, in]` matrices with heads flattened into one axis; rlreason keeps
`[in, heads, head_dim]` (see transformer.py). A `Layout` says how: the HF tensor, with some of its axes split
into several ("view" axes), transposed by `perm`, is the rlreason leaf of one layer.

    leaf        HF tensor      view           rlreason
    q_proj      [H*D, E]       [H, D, E]      [E, H, D]
    o_proj      [E, H*D]       [E, H, D]      [H, D, E]
    gate_proj   [M, E]         [M, E]         [E, M]      (up_proj, down_proj, lm_head likewise transposed)
    q_bias      [H*D]          [H, D]         [H, D]
    norms, embed               unchanged
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
    """splits: how many view axes each HF axis becomes; perm: rlreason axis i is view axis perm[i]."""

    splits: tuple[int, ...]
    perm: tuple[int, ...]


_HEADS_IN = Layout(splits=(2, 1), perm=(2, 0, 1))
_TRANSPOSED = Layout(splits=(1, 1), perm=(1, 0))
_HEADS_BIAS = Layout(splits=(2,), perm=(0, 1))
_VECTOR = Layout(splits=(1,), perm=(0,))
_MATRIX = Layout(splits=(1, 1), perm=(0, 1))

LEAF_LAYOUTS = {
    "embed": _MATRIX,
    "lm_head": _TRANSPOSED,
    "final_norm": _VECTOR,
    "attn_norm": _VECTOR,
    "mlp_norm": _VECTOR,
    "post_attn_norm": _VECTOR,
    "post_mlp_norm": _VECTOR,
    "q_norm": _VECTOR,
    "k_norm": _VECTOR,
    "q_proj": _HEADS_IN,
    "k_proj": _HEADS_IN,
    "v_proj": _HEADS_IN,
    "o_proj": Layout(splits=(1, 2), perm=(1, 2, 0)),
    "q_bias": _HEADS_BIAS,
    "k_bias": _HEADS_BIAS,
    "v_bias": _HEADS_BIAS,
    "gate_proj": _TRANSPOSED,
    "up_proj": _TRANSPOSED,
    "down_proj": _TRANSPOSED,
}


def _view_shape(layout: Layout, leaf_shape: tuple[int, ...]) -> list[int]:
    view = [0] * len(leaf_shape)
    for axis, view_axis in enumerate(layout.perm):
        view[view_axis] = leaf_shape[axis]
    return view


def _groups(layout: Layout) -> list[range]:
    """The view axes of each HF axis."""
    starts = np.cumsum((0,) + layout.splits)
    return [range(start, stop) for start, stop in zip(starts[:-1], starts[1:])]


def hf_shape(layout: Layout, leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape of one layer's leaf of shape `leaf_shape` (without the layers axis)."""
    view = _view_shape(layout, leaf_shape)
    return tuple(math.prod(view[axis] for axis in group) for group in _groups(layout))


def to_hf(layout: Layout, leaf: np.ndarray) -> np.ndarray:
    """One layer's leaf in HF layout."""
    view = np.transpose(leaf, np.argsort(layout.perm))
    return view.reshape(hf_shape(layout, leaf.shape))


def read_leaf_block(layout: Layout, leaf_shape: tuple[int, ...], block: tuple[slice, ...],
                    read_hf: Callable[[tuple[slice, ...]], np.ndarray]) -> np.ndarray:
    """The block `block` (contiguous slices over the leaf's axes) of one layer's leaf, in rlreason layout.

    `read_hf(hf_slices)` reads a block of the HF tensor. Each HF axis is read over the rows of its outermost
    view axis that the block needs and all of its inner ones (a split axis is contiguous only that way), so a
    block that splits head_dim reads whole heads; a block over heads, embed or mlp reads exactly its slice.
    """
    view = _view_shape(layout, leaf_shape)
    view_block = [slice(None)] * len(view)
    for axis, view_axis in enumerate(layout.perm):
        view_block[view_axis] = slice(*block[axis].indices(leaf_shape[axis])[:2])
    hf_slices, read_view, inner_block = [], [], []
    for group in _groups(layout):
        outer, inner = group[0], list(group[1:])
        inner_size = math.prod(view[axis] for axis in inner)
        hf_slices.append(slice(view_block[outer].start * inner_size, view_block[outer].stop * inner_size))
        read_view += [view_block[outer].stop - view_block[outer].start] + [view[axis] for axis in inner]
        inner_block += [slice(None)] + [view_block[axis] for axis in inner]
    values = np.asarray(read_hf(tuple(hf_slices))).reshape(read_view)[tuple(inner_block)]
    return np.transpose(values, layout.perm)
