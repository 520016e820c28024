"""GRPO steps of the real trainer (`build_trainer`) on one or several meshes, saved for comparison.

usage: python grpo_steps.py OUT.npz STEPS MESHES CONFIG [key=value ...]
  MESHES: comma-separated DATAxFSDPxTENSOR shapes of one device count, e.g. 8x1x1,1x8x1 (or 1x1x1 alone)

The process simulates that many CPU devices. For each mesh (prefix "DxFxT") it builds the trainer from CONFIG
with the mesh.* keys set, feeds prompt batches through `Trainer.prompt_batch` as `rlreason train` does, and
records per step k (1..STEPS): every metric (metric/NAME/k), the sampled tokens, completion masks, log-probs
and per-function rewards (samples/KEY/k), and the params (params/LEAF/k, with k=0 the loaded ones). After the
last step: the PartitionSpec of every params, ref_params, optimizer-state and (LoRA) base leaf of the state
(spec/...), and the most bytes one device holds for the params and for the optimizer state. With 8 devices it
also records the error `build_trainer` raises for a batch of 6 prompts on the 8x1x1 mesh. The pytest side
compares; this script only computes.
"""

from __future__ import annotations

import json
import math
import sys

from rlreason.config import ConfigError, DistributedConfig, load_config
from rlreason.parallel import distributed

OUT_PATH, STEPS, MESHES, CONFIG, OVERRIDES = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4], \
    sys.argv[5:]
DEVICES = math.prod(int(size) for size in MESHES[0].split("x"))
distributed.initialize(DistributedConfig(local_device_count=DEVICES))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlreason.parallel.memory import max_device_bytes  # noqa: E402
from rlreason.train.loop import build_trainer  # noqa: E402


def mesh_config(mesh: str, *extra: str):
    data, fsdp, tensor = mesh.split("x")
    return load_config(CONFIG, [*OVERRIDES, f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}",
                                f"distributed.local_device_count={DEVICES}", *extra])


def leaves(tree) -> list[tuple[str, jax.Array]]:
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def spec_json(leaf: jax.Array) -> str:
    """The leaf's PartitionSpec as JSON, one entry per dimension (trailing unsplit dims written as null)."""
    spec = list(leaf.sharding.spec) + [None] * (leaf.ndim - len(leaf.sharding.spec))
    return json.dumps([list(entry) if isinstance(entry, tuple) else entry for entry in spec])


def run_mesh(mesh: str) -> dict[str, np.ndarray]:
    trainer = build_trainer(mesh_config(mesh))
    state = trainer.state
    results = {f"params/{name}/0": np.asarray(leaf) for name, leaf in leaves(state.params)}
    for step in range(1, STEPS + 1):
        state, metrics, samples = trainer.step_fn(state, trainer.prompt_batch(next(trainer.batches)))
        results.update({f"metric/{name}/{step}": np.asarray(value) for name, value in metrics.items()})
        roll = samples.rollout
        results.update({f"samples/tokens/{step}": np.asarray(roll.tokens),
                        f"samples/completion_mask/{step}": np.asarray(roll.completion_mask),
                        f"samples/logprobs/{step}": np.asarray(roll.logprobs),
                        f"samples/rewards/{step}": np.asarray(samples.rewards)})
        results.update({f"params/{name}/{step}": np.asarray(leaf) for name, leaf in leaves(state.params)})
    for part in ("params", "ref_params", "opt_state", "base"):
        results.update({f"spec/{part}{name}": np.array(spec_json(leaf)) for name, leaf in leaves(getattr(state, part))})
    results["bytes_per_device/params"] = np.int64(max_device_bytes(state.params))
    results["bytes_per_device/opt_state"] = np.int64(max_device_bytes(state.opt_state))
    return {f"{mesh}/{key}": value for key, value in results.items()}


def batch_error() -> dict[str, np.ndarray]:
    """What building a trainer whose 6-prompt batch cannot split over 8 data-parallel devices raises."""
    try:
        build_trainer(mesh_config("8x1x1", "train.batch_size=6"))
    except ConfigError as error:
        return {"errors/batch_6_on_8x1x1": np.array(str(error))}
    return {"errors/batch_6_on_8x1x1": np.array("no error")}


def main() -> None:
    results = {}
    for mesh in MESHES:
        results.update(run_mesh(mesh))
    if DEVICES == 8:
        results.update(batch_error())
    np.savez(OUT_PATH, **results)


if __name__ == "__main__":
    main()
