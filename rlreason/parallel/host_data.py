"""Moving rows between hosts and global arrays: each process feeds its rows; logging gathers them back.

A global batch [B, ...] is split over the mesh axes of the `batch` rule. Because devices are ordered
process-major, the rows held by one process's devices are one contiguous block: `process_rows` says which,
the data pipeline loads only those, and `global_batch` assembles the global array without any copy between
hosts. Where the batch is not split across processes (e.g. a tensor-only mesh), every process feeds all rows.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from rlreason.parallel.rules import AXIS_RULES, Rules, batch_shards, batch_sharding


def process_rows(mesh: Mesh, global_batch_size: int, rules: Rules = AXIS_RULES) -> slice:
    """The rows of a global batch of `global_batch_size` rows that this process's devices hold."""
    split = batch_shards(mesh, rules)
    if global_batch_size % split:
        raise ValueError(f"a global batch of {global_batch_size} rows does not split evenly over the "
                         f"{split} devices of the batch axes {rules['batch']} (mesh {dict(mesh.shape)})")
    indices = batch_sharding(mesh, 1, rules).addressable_devices_indices_map((global_batch_size,))
    blocks = sorted({index[0].indices(global_batch_size)[:2] for index in indices.values()})
    if any(stop != next_start for (_, stop), (next_start, _) in zip(blocks, blocks[1:])):
        raise ValueError(f"this process's devices hold rows {blocks} of the batch, not one contiguous block; "
                         f"order the mesh so that the batch axes are split process-major")
    return slice(blocks[0][0], blocks[-1][1])


def global_batch(local_rows: Any, mesh: Mesh, global_batch_size: int, rules: Rules = AXIS_RULES) -> Any:
    """A tree of this process's rows (numpy [len(process_rows), ...]) -> global arrays [global_batch_size, ...]."""
    rows_here = process_rows(mesh, global_batch_size, rules)

    def assemble(rows: np.ndarray) -> jax.Array:
        if rows.shape[0] != rows_here.stop - rows_here.start:
            raise ValueError(f"this process must feed rows [{rows_here.start}, {rows_here.stop}) of the global "
                             f"batch ({rows_here.stop - rows_here.start} rows), got {rows.shape[0]}")
        return jax.make_array_from_process_local_data(batch_sharding(mesh, rows.ndim, rules), rows,
                                                      (global_batch_size, *rows.shape[1:]))
    return jax.tree.map(assemble, local_rows)


def trim_prompt_padding(rows: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """This process's prompt rows (left-padded prompt_tokens and prompt_mask [P, Tp], ...) with the padding
    columns that no prompt of the GLOBAL batch uses cut away: Tp becomes the longest prompt of any process's rows,
    rounded up to a multiple of `multiple` (never more than Tp). Every process cuts to the same width."""
    longest = int(rows["prompt_mask"].sum(axis=1).max(initial=1))
    if jax.process_count() > 1:
        longest = int(np.max(multihost_utils.process_allgather(np.asarray(longest))))
    width = rows["prompt_tokens"].shape[1]
    kept = min(width, -(-longest // multiple) * multiple)
    return {**rows, "prompt_tokens": rows["prompt_tokens"][:, width - kept:],
            "prompt_mask": rows["prompt_mask"][:, width - kept:]}


def gather_rows(tree: Any) -> Any:
    """Global arrays -> full numpy arrays on every host (for logging and evaluation, not the hot path)."""
    return multihost_utils.process_allgather(tree, tiled=True)
