"""Runs a tiny model unsharded (one device, the reference) and on several meshes of 8 CPU devices.

usage: python sharded_outputs.py OUT.npz DATA,FSDP,TENSOR [DATA,FSDP,TENSOR ...]

Writes, for the reference ("single") and for each mesh ("DxFxT"): forward logits, prefill logits (in causal
query blocks) and KV cache through a cache placed by `cache_sharding`, greedy and sampled `generate` outputs, the
parameter values, the PartitionSpec and local shard shape of every parameter leaf, the most bytes a device holds
for the params and for an Adam state, and the compiled per-device peak of the sharded initializer. The pytest side
compares them; this script only computes.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from rlreason.config import DistributedConfig, MeshConfig, ModelConfig
from rlreason.parallel import distributed

distributed.initialize(DistributedConfig(local_device_count=8))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from rlreason.models.transformer import forward, init_cache, init_params, positions_from_mask  # noqa: E402
from rlreason.parallel.memory import max_device_bytes  # noqa: E402
from rlreason.parallel.mesh import make_mesh  # noqa: E402
from rlreason.parallel.rules import (batch_sharding, cache_sharding, opt_state_shardings, param_shardings,  # noqa: E402
                                     replicated)
from rlreason.parallel.sharded_init import init_opt_state_sharded, params_initializer  # noqa: E402
from rlreason.sampling.sampler import SamplingParams, generate  # noqa: E402

# Dimensions divide 8 where a mesh axis may split them; 2 KV heads on tensor=4 exercise the replication rule.
MODEL = ModelConfig(family="qwen2", vocab_size=256, hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=2,
                    head_dim=16, intermediate_size=128, qkv_bias=True, tie_embeddings=False, init_std=0.2)
BATCH, PROMPT_LENGTH = 8, 6
# The prefill attends in causal query blocks (two: positions 0-3 and 4-5), each block's keys sliced on the mesh.
BLOCKED = dataclasses.replace(MODEL, attention_block_size=4)
GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0)
# The sampled run grows its cache in two segments (each decode loop placed on the mesh).
SAMPLED = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=40, top_p=0.9, decode_segments=2)
OPTIMIZER = optax.adam(1e-3)


def inputs():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, PROMPT_LENGTH + 1, BATCH)
    mask = np.arange(PROMPT_LENGTH)[None, :] >= PROMPT_LENGTH - lengths[:, None]  # left padding
    tokens = np.where(mask, rng.integers(1, MODEL.vocab_size, (BATCH, PROMPT_LENGTH)), 0).astype(np.int32)
    stop_tokens = np.tile(np.arange(5, MODEL.vocab_size, 16, dtype=np.int32), (BATCH, 1))  # some rows stop early
    return tokens, mask, stop_tokens


def run(params, adam_state, tokens, mask, stop_tokens, rng, cache) -> dict[str, np.ndarray]:
    """Everything the model computes, on whatever devices the arguments live on."""
    positions = positions_from_mask(mask)
    logits, _ = jax.jit(forward, static_argnums=4)(params, tokens, positions, mask, MODEL)
    key_valid = jnp.concatenate([mask, jnp.zeros((BATCH, cache.values.shape[3] - PROMPT_LENGTH), bool)], axis=1)
    prefill_logits, cache = jax.jit(forward, static_argnums=4)(params, tokens, positions, key_valid, BLOCKED, cache)
    sample = jax.jit(generate, static_argnums=(5, 6))
    greedy = sample(params, tokens, mask, stop_tokens, rng, MODEL, GREEDY)
    sampled = sample(params, tokens, mask, stop_tokens, rng, MODEL, SAMPLED)
    return {"logits": logits, "prefill_logits": prefill_logits, "cache_keys": cache.keys,
            "cache_values": cache.values, "greedy_tokens": greedy.tokens, "greedy_mask": greedy.completion_mask,
            "sampled_tokens": sampled.tokens, "sampled_logprobs": sampled.logprobs,
            "sampled_mask": sampled.completion_mask,
            "param_bytes_per_device": np.int64(max_device_bytes(params)),
            "adam_bytes_per_device": np.int64(max_device_bytes(adam_state))}


def leaf_values(prefix: str, params) -> dict[str, np.ndarray]:
    return {f"{prefix}/value/{jax.tree_util.keystr(path)}": np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def leaf_layouts(prefix: str, params) -> dict[str, np.ndarray]:
    """Each leaf's PartitionSpec (JSON: a list with one entry per dim) and the shape of its local shard."""
    records = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path)
        records[f"{prefix}/spec/{name}"] = np.array(spec_json(leaf.sharding.spec))
        records[f"{prefix}/shard_shape/{name}"] = np.array(leaf.addressable_shards[0].data.shape)
    return records


def spec_json(spec) -> str:
    return json.dumps([list(entry) if isinstance(entry, tuple) else entry for entry in spec])


def main(out_path: str, mesh_shapes: list[str]) -> None:
    tokens, mask, stop_tokens = inputs()
    rng = jax.random.key(3)
    reference_params = jax.jit(init_params, static_argnums=0)(MODEL, rng)
    cache_length = PROMPT_LENGTH + 4
    results = {f"single/{key}": np.asarray(value) for key, value in run(
        reference_params, OPTIMIZER.init(reference_params), tokens, mask, stop_tokens, rng,
        init_cache(MODEL, BATCH, cache_length)).items()}
    results.update(leaf_values("single", reference_params))
    for shape in mesh_shapes:
        data, fsdp, tensor = (int(size) for size in shape.split(","))
        mesh = make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor))
        name = f"{data}x{fsdp}x{tensor}"
        replicated_rng = jax.device_put(rng, replicated(mesh))
        initializer = params_initializer(MODEL, param_shardings(MODEL, mesh))
        memory = initializer.lower(replicated_rng).compile().memory_analysis()
        results[f"{name}/init_peak_bytes"] = np.int64(memory.output_size_in_bytes + memory.temp_size_in_bytes)
        params = initializer(replicated_rng)
        adam_state = init_opt_state_sharded(OPTIMIZER, params, opt_state_shardings(OPTIMIZER, MODEL, mesh))
        rows = batch_sharding(mesh, 2)
        cache = jax.device_put(init_cache(MODEL, BATCH, cache_length),
                               cache_sharding(MODEL, mesh, BATCH, cache_length))
        results[f"{name}/cache_spec"] = np.array(spec_json(cache.keys.sharding.spec))
        outputs = run(params, adam_state, jax.device_put(tokens, rows), jax.device_put(mask, rows),
                      jax.device_put(stop_tokens, rows), replicated_rng, cache)
        results.update({f"{name}/{key}": np.asarray(value) for key, value in outputs.items()})
        results.update(leaf_values(name, params))
        results.update(leaf_layouts(name, params))
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
