"""Loads a HF checkpoint onto a 2x2 CPU mesh and checks every shard, and that each device read only its block;
then the same for a GGUF file (whose q/k rows are un-permuted per block of whole heads).

Run as `python sharded_import.py HF_DIR GGUF_FILE`; prints "sharded import ok" on success. Needs its own
process: the device count must be set before JAX starts.
"""

import math
import sys

import jax

jax.config.update("jax_num_cpu_devices", 4)

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from rlreason.models.gguf_import import import_gguf  # noqa: E402
from rlreason.models.hf_import import SafetensorsSource, import_hf, load_params  # noqa: E402
from rlreason.models.transformer import logical_axes  # noqa: E402

# Logical axis -> mesh axis: heads, mlp and vocab over "model", the embedding over "data".
RULES = {"heads": "model", "kv_heads": "model", "mlp": "model", "vocab": "model", "embed": "data"}


class RecordingSource(SafetensorsSource):
    """Remembers the element count of every read, per tensor."""

    def __init__(self, directory):
        super().__init__(directory)
        self.reads = []

    def read(self, name, block):
        values = super().read(name, block)
        self.reads.append((name, values.size, math.prod(self.tensor_shape(name))))
        return values


def check_shards(params, reference, shardings) -> None:
    for leaf, full, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(reference), jax.tree.leaves(shardings)):
        assert leaf.sharding == sharding, (leaf.sharding, sharding)
        for shard in leaf.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(full)[shard.index])


def main(directory: str, gguf_path: str) -> None:
    reference, cfg = import_hf(directory)
    mesh = jax.make_mesh((2, 2), ("data", "model"))
    shardings = jax.tree.map(lambda axes: NamedSharding(mesh, PartitionSpec(*(RULES.get(a) for a in axes))),
                             logical_axes(cfg), is_leaf=lambda node: isinstance(node, tuple))
    source = RecordingSource(directory)
    check_shards(load_params(source, cfg, shardings), reference, shardings)
    # Every leaf of this model is split over at least one mesh axis except the norms, so no device may read a
    # whole projection or embedding matrix.
    whole_matrix_reads = [name for name, size, total in source.reads if size == total and "norm" not in name]
    assert not whole_matrix_reads, f"devices read whole tensors: {sorted(set(whole_matrix_reads))[:4]}"
    check_shards(import_gguf(gguf_path, shardings)[0], import_gguf(gguf_path)[0], shardings)
    print("sharded import ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
