"""One GRPO step with the calculator enabled, of the scripted model of tests/sampling/scripted.py (which calls it),
on one device and on meshes of 8 simulated CPU devices, saved for comparison.

usage: python tool_steps.py OUT.npz MESHES
  MESHES: comma-separated DATAxFSDPxTENSOR shapes of 8 devices, e.g. 8x1x1,2x2x2

Per run (prefix "1x1x1" for the single device, else the mesh): every metric (metric/NAME), the sampled tokens,
completion and observation masks and log-probs (samples/KEY), and the params after the step (params/LEAF). The
rollout rows and the prompt batch are split over the mesh as the trainer splits them; the params are replicated.
Also the id of `<result>`, which starts every inserted result (result_open_id). The pytest side compares; this
script only computes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlreason.config import DistributedConfig, MeshConfig
from rlreason.parallel import distributed

OUT_PATH, MESHES = sys.argv[1], sys.argv[2].split(",")
distributed.initialize(DistributedConfig(local_device_count=8))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sampling"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlreason.parallel.mesh import make_mesh  # noqa: E402
from rlreason.parallel.rules import model_layout, rows_sharding  # noqa: E402
from rlreason.sampling.sampler import SamplingParams  # noqa: E402
from rlreason.sampling.tools import TOOLS, ToolTurns  # noqa: E402
from scripted import ID, PieceTokenizer, scripted_grpo  # noqa: E402

PROMPTS = ("Q", "Q", "R", "Q", "R", "Q", "Q", "R")  # x 2 completions: 16 rows, 2 per device on 8x1x1
SAMPLING = SamplingParams(max_new_tokens=20, temperature=1.0)


def run(mesh_name: str) -> dict[str, np.ndarray]:
    tools = ToolTurns((TOOLS["calc"],), PieceTokenizer(), max_calls=2, max_observation_tokens=8, timeout_s=5.0)
    if mesh_name == "1x1x1":
        mesh, arrays = None, None
    else:
        data, fsdp, tensor = (int(size) for size in mesh_name.split("x"))
        mesh = make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor))
        arrays = model_layout(mesh)
    functions, state, batch = scripted_grpo(tools, SAMPLING, arrays, margin=7.0)
    prompts = batch(*PROMPTS)
    if mesh is not None:
        prompts = {key: jax.device_put(value, rows_sharding(mesh, value.shape)) for key, value in prompts.items()}
    state, metrics, samples = jax.jit(functions.step)(state, prompts)
    roll = samples.rollout
    results = {f"metric/{name}": np.asarray(value) for name, value in metrics.items()}
    results.update({f"samples/{key}": np.asarray(getattr(roll, key))
                    for key in ("tokens", "completion_mask", "observation_mask", "logprobs")})
    results.update({f"params/{jax.tree_util.keystr(path)}": np.asarray(leaf)
                    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]})
    return {f"{mesh_name}/{key}": value for key, value in results.items()}


def main() -> None:
    results = {"result_open_id": np.int32(ID["<result>"])}
    for mesh_name in ("1x1x1", *MESHES):
        results.update(run(mesh_name))
    np.savez(OUT_PATH, **results)


if __name__ == "__main__":
    main()
