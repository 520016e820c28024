"""MCTS and step-level beam search of 8 problems on one device (the reference) and with the sampler's rows and the
params split over a mesh of 8 CPU devices (data 4 x fsdp 2); writes both runs' results as JSON.

usage: python sharded_mcts.py OUT.json

The tiny model, tokenizer, step table and evaluator are tests/search's; the pytest side compares the runs.
"""

from __future__ import annotations

import json
import sys

from rlreason.config import DistributedConfig, MeshConfig
from rlreason.parallel import distributed

distributed.initialize(DistributedConfig(local_device_count=8))

import jax  # noqa: E402

from rlreason.parallel.mesh import make_mesh  # noqa: E402
from rlreason.parallel.rules import param_shardings  # noqa: E402
from rlreason.search.beam import beam_search  # noqa: E402
from rlreason.search.mcts import mcts_search  # noqa: E402

sys.path.insert(0, "tests/search")
from test_mcts import (CFG, MAX_STEPS, PARAMS, ROLLOUTS, SAMPLED, STEP_TOKENS, TABLE, TOKENIZER,  # noqa: E402
                       all_nodes)

PROMPTS = [TOKENIZER.encode(f"what is {a}+{b}?") for a, b in zip(range(1, 9), range(9, 1, -1))]


def run(params, mesh) -> list[dict]:
    results = mcts_search(params, CFG, TOKENIZER, PROMPTS, ROLLOUTS, TABLE, simulations=5, expand=2,
                          max_steps=MAX_STEPS, max_step_tokens=STEP_TOKENS, sampling=SAMPLED,
                          rng=jax.random.key(7), first_play=1.0, mesh=mesh)
    return [{"completion": result.completion, "logprobs": result.logprobs.tolist(), "value": result.value,
             "tokens_generated": result.tokens_generated, "root_visits": result.root_visits,
             "tree": sorted((node.completion(), node.visits) for node in all_nodes(result.root))}
            for result in results]


def last_token_score(tokens, mask):
    """Any scorer makes the beams compete: this one prefers rows that end in a low token id."""
    return -tokens[:, -1].astype(float)


def run_beam(params, mesh) -> list[dict]:
    results = beam_search(params, CFG, TOKENIZER, PROMPTS, last_token_score, TABLE, beam=2, expand=2,
                          max_steps=MAX_STEPS, max_step_tokens=STEP_TOKENS, sampling=SAMPLED,
                          keys=jax.random.split(jax.random.key(8), len(PROMPTS)), mesh=mesh)
    return [{"completion": result.completion, "score": result.score, "tokens_generated": result.tokens_generated}
            for result in results]


def main(out_path: str) -> None:
    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(data=4, fsdp=2, tensor=1))
    sharded_params = jax.device_put(PARAMS, param_shardings(CFG, mesh))
    with open(out_path, "w") as file:
        json.dump({"single": run(PARAMS, None), "sharded": run(sharded_params, mesh),
                   "beam_single": run_beam(PARAMS, None), "beam_sharded": run_beam(sharded_params, mesh)}, file)


if __name__ == "__main__":
    main(sys.argv[1])
