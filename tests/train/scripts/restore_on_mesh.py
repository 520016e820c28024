"""Restores a checkpoint saved on one device onto the mesh this process is given, and records what it got.

usage: XLA_FLAGS=--xla_force_host_platform_device_count=N python restore_on_mesh.py OUT.npz CONFIG [key=value ...]

The overrides name the checkpoint (checkpoint.dir), the model directory and the mesh (mesh.*). The state is
restored as `rlreason train` resumes: into the abstract state of a trainer built for this mesh. OUT.npz gets
the device count, every leaf of the restored state (leaf/NAME, gathered), its PartitionSpec (spec/NAME), the raw
RNG key data, the checkpoint's step, and the next prompt batch of the restored stream (batch/KEY). The pytest side compares.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from rlreason.config import load_config
from rlreason.train.checkpoint import RunCheckpoints, leaf_name
from rlreason.train.loop import build_trainer


def main(out_path: str, config: str, overrides: list[str]) -> None:
    cfg = load_config(config, overrides)
    trainer = build_trainer(cfg, abstract_state=True)
    with RunCheckpoints(cfg) as checkpoints:
        state, step = checkpoints.restore(trainer.state, trainer.batches)
    results = {"devices": np.asarray(jax.device_count()), "step": np.asarray(step),
               "rng": np.asarray(jax.random.key_data(state.rng))}
    for path, leaf in jax.tree.leaves_with_path(state.replace(rng=None)):
        results[f"leaf/{leaf_name(path)}"] = np.asarray(leaf)
        results[f"spec/{leaf_name(path)}"] = np.asarray(str(leaf.sharding.spec))
    results.update({f"batch/{key}": value for key, value in next(trainer.batches).items()})
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
