"""What the compiled GRPO update (the step's `learn` phase) does on each mesh of 8 CPU devices, for the test to
judge: its all-gathers (result shape, gathered dimension) and its per-device FLOPs (XLA's cost analysis).

usage: python update_hlo.py OUT.json MESHES CONFIG [key=value ...]
  MESHES: comma-separated DATAxFSDPxTENSOR shapes of one device count, e.g. 8x1x1,1x8x1,2x2x2 (or 1x1x1 alone)

Nothing runs: the trainer is built with an abstract state and `learn` is compiled for rollout rows laid out as
the step lays them out (split over the `batch` rule's mesh axes).
"""

from __future__ import annotations

import json
import math
import sys

from rlreason.config import DistributedConfig, load_config
from rlreason.parallel import distributed

OUT_PATH, MESHES, CONFIG, OVERRIDES = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4:]
DEVICES = math.prod(int(size) for size in MESHES[0].split("x"))
distributed.initialize(DistributedConfig(local_device_count=DEVICES))

import jax  # noqa: E402

from rlreason.parallel.rules import axis_rules, rows_sharding  # noqa: E402
from rlreason.train.loop import build_trainer  # noqa: E402

from compiled_facts import compiled_facts  # noqa: E402  (this folder's module)


def compiled_learn(mesh: str):
    data, fsdp, tensor = mesh.split("x")
    cfg = load_config(CONFIG, [*OVERRIDES, f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}",
                               f"distributed.local_device_count={DEVICES}"])
    trainer = build_trainer(cfg, abstract_state=True)
    batch = trainer.prompt_batch(next(trainer.batches))
    roll = jax.eval_shape(trainer.functions.rollout, trainer.state.params, batch, trainer.state.rng)
    rows = cfg.train.batch_size * cfg.grpo.num_generations
    rewards = jax.ShapeDtypeStruct((rows, len(cfg.grpo.rewards)), jax.numpy.float32)
    laid_out = lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,  # noqa: E731
                                                 sharding=rows_sharding(trainer.mesh, leaf.shape, axis_rules(cfg.mesh)))
    roll, rewards = jax.tree.map(laid_out, roll), laid_out(rewards)
    return jax.jit(trainer.functions.learn).lower(trainer.state, roll, rewards).compile()


results = {}
for mesh in MESHES:
    results[mesh] = compiled_facts(compiled_learn(mesh))
with open(OUT_PATH, "w") as out:
    json.dump(results, out)
