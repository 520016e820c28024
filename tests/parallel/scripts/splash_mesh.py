"""The splash attention kernel on meshes of 8 CPU devices, run per device by the model's layout (jax.shard_map):
the logits and the gradient of a masked loss of a small model, computed on each mesh with `model.attention:
splash` and on one device with the einsum path, and the compiled program's all-gathers.

usage: python splash_mesh.py OUT.json MESHES   (MESHES: comma-separated DATAxFSDPxTENSOR shapes of 8 devices)
"""

from __future__ import annotations

import dataclasses
import json
import sys

from rlreason.config import DistributedConfig, MeshConfig, ModelConfig
from rlreason.parallel import distributed

OUT_PATH, MESHES = sys.argv[1], sys.argv[2].split(",")
distributed.initialize(DistributedConfig(local_device_count=8))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlreason.models.transformer import forward, init_params, laid_out, positions_from_mask  # noqa: E402
from rlreason.parallel.mesh import make_mesh  # noqa: E402
from rlreason.parallel.rules import axis_rules, model_layout, param_shardings, rows_sharding  # noqa: E402

from compiled_facts import compiled_facts  # noqa: E402  (this folder's module)

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=48, init_std=0.3)
ROWS, LENGTH = 16, 9
PARAMS = init_params(CFG, jax.random.key(0))
MASK = jnp.asarray(np.arange(LENGTH)[None, :] >= (np.arange(ROWS) % LENGTH)[:, None])  # every left padding width
TOKENS = jnp.where(MASK, jax.random.randint(jax.random.key(1), MASK.shape, 1, CFG.vocab_size), 0)


def loss(params, cfg, tokens, mask):
    logits, _ = forward(params, tokens, positions_from_mask(mask), mask, cfg)
    return jnp.sum(jnp.where(mask[..., None], logits, 0.0) ** 2), logits


def flat(grads) -> np.ndarray:
    return np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(grads)])


(_, reference_logits), reference_grads = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
    PARAMS, CFG, TOKENS, MASK)
results = {"reference_logits": np.asarray(reference_logits)[np.asarray(MASK)].tolist(),
           "reference_grads": flat(reference_grads).tolist()}
splash = dataclasses.replace(CFG, attention="splash")
for shape in MESHES:
    data, fsdp, tensor = (int(size) for size in shape.split("x"))
    mesh_cfg = MeshConfig(data=data, fsdp=fsdp, tensor=tensor)
    mesh, rules = make_mesh(mesh_cfg), axis_rules(mesh_cfg)
    params = jax.device_put(PARAMS, param_shardings(CFG, mesh, rules))
    tokens, mask = (jax.device_put(x, rows_sharding(mesh, x.shape, rules)) for x in (TOKENS, MASK))
    step = jax.jit(laid_out(jax.value_and_grad(lambda p, t, m: loss(p, splash, t, m), has_aux=True),
                            model_layout(mesh, rules)))
    (_, logits), grads = step(params, tokens, mask)
    results[shape] = {"logits": np.asarray(logits)[np.asarray(MASK)].tolist(), "grads": flat(grads).tolist(),
                      "all_gathers": compiled_facts(step.lower(params, tokens, mask).compile())["all_gathers"]}
with open(OUT_PATH, "w") as out:
    json.dump(results, out)
