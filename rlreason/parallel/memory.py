"""How many bytes each device holds for a tree of arrays, read from the arrays' actual shards."""

from __future__ import annotations

import collections
from typing import Any

import jax


def device_bytes(tree: Any) -> dict[jax.Device, int]:
    """{local device: bytes of the shards of `tree`'s arrays stored on it} (replicas count on every device)."""
    totals: collections.Counter = collections.Counter()
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array):
            raise TypeError(f"device_bytes counts jax.Array leaves only, got {type(leaf).__name__}")
        for shard in leaf.addressable_shards:
            totals[shard.device] += shard.data.nbytes
    return dict(totals)


def max_device_bytes(tree: Any) -> int:
    """The most bytes any local device holds for `tree` (params, an optax state, a cache): what must fit."""
    return max(device_bytes(tree).values(), default=0)
