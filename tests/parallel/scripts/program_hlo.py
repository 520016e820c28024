"""What the mesh programs other than the GRPO step do on each mesh of 8 CPU devices, for the test to judge: the
result shape and gathered dimension of each compiled program's all-gathers, and its per-device FLOPs (XLA's
cost analysis).

usage: python program_hlo.py OUT.json MESHES MODEL_DIR
  MESHES: comma-separated DATAxFSDPxTENSOR shapes of one device count, e.g. 8x1x1,1x8x1,2x2x2 (or 1x1x1 alone)
  MODEL_DIR: a model directory (its architecture and tokenizer; its weights only for the PRM's scores)

Nothing runs: each program is compiled as its command compiles it, for abstract inputs laid out as the command
lays them out. Every program carries 32 rows (or 8 prompts of 4 rows each):
  sft           the `rlreason sft` update (rlreason.train.sft.make_sft_step) of 32 token rows
  distill       the `rlreason distill` step, the model as its own teacher, 8 prompts x 4 samples
  continuation  the sampler of step-level search (rlreason.search.continuation), 8 partial solutions x 4
  prm_scores    evaluation's PRM scores of 32 sampled rows (rlreason.train.evaluate.prm_scoring), zero head
  prm_update    `rlreason prm`'s update of the PRM on 32 labelled rows (rlreason.train.prm.prm_programs)
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

from rlreason.config import DistributedConfig, MeshConfig, load_config
from rlreason.parallel import distributed

OUT_PATH, MESHES, MODEL_DIR = sys.argv[1], sys.argv[2].split(","), Path(sys.argv[3])
DEVICES = math.prod(int(size) for size in MESHES[0].split("x"))
distributed.initialize(DistributedConfig(local_device_count=DEVICES))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlreason.data.sft import SFT_ROW_KEYS  # noqa: E402
from rlreason.models.store import load_model_config, load_model_tokenizer  # noqa: E402
from rlreason.models.transformer import init_params  # noqa: E402
from rlreason.parallel.mesh import make_mesh  # noqa: E402
from rlreason.parallel.rules import axis_rules, model_layout, param_shardings, rows_sharding  # noqa: E402
from rlreason.rl.step import init_train_state  # noqa: E402
from rlreason.sampling.sampler import SamplingParams  # noqa: E402
from rlreason.search.continuation import compiled_sampler  # noqa: E402
from rlreason.search.prm import PRM_HEAD_FILE, PRM_SETTINGS_FILE, init_head  # noqa: E402
from rlreason.train.distill import make_distill_step  # noqa: E402
from rlreason.train.evaluate import prm_scoring  # noqa: E402
from rlreason.train.optim import make_optimizer  # noqa: E402
from rlreason.train.prm import PRMRows, prm_programs  # noqa: E402
from rlreason.train.sft import make_sft_step  # noqa: E402
from rlreason.train.update_loop import state_layout  # noqa: E402

from compiled_facts import compiled_facts  # noqa: E402  (this folder's module)

PROMPTS, GROUP, PROMPT_WIDTH, SEQ_LEN = 8, 4, 16, 40
ROWS = PROMPTS * GROUP
MODEL_CFG = load_model_config(MODEL_DIR)[0]
CFG = load_config(Path(__file__).parents[3] / "configs" / "demo_cpu.yaml",
                  [f"distill.num_generations={GROUP}", f"sampling.max_prompt_length={PROMPT_WIDTH}",
                   "sampling.max_completion_length=24"])
TOKENIZER = load_model_tokenizer(MODEL_DIR, "tokenizer.model")


def prm_folder() -> Path:
    """A `rlreason prm` folder of MODEL_DIR's transformer with a zero head (what its scores are does not matter
    here, only how the program computes them)."""
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(MODEL_DIR, folder / "model")
    np.savez(folder / PRM_HEAD_FILE, w=np.zeros(MODEL_CFG.hidden_size, np.float32), b=np.zeros((), np.float32))
    (folder / PRM_SETTINGS_FILE).write_text(json.dumps({"delimiter": "\n"}))
    return folder


def compiled_programs(mesh_shape: str, prm_dir: Path) -> dict:
    data, fsdp, tensor = (int(size) for size in mesh_shape.split("x"))
    mesh_cfg = MeshConfig(data=data, fsdp=fsdp, tensor=tensor)
    mesh, rules = make_mesh(mesh_cfg), axis_rules(mesh_cfg)
    on_rows = lambda shape, dtype=jnp.int32: jax.ShapeDtypeStruct(  # noqa: E731
        shape, dtype, sharding=rows_sharding(mesh, shape, rules))
    optimizer, schedule = make_optimizer(CFG.sft.optim, 10)
    layout = state_layout(MODEL_CFG, optimizer, mesh, rules)
    rng = jax.random.key(0)
    shapes = jax.eval_shape(lambda: init_train_state(init_params(MODEL_CFG, rng), optimizer, rng, False))
    state = jax.tree.map(lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
                         shapes, layout)
    params = state.params
    prompts = {"prompt_tokens": on_rows((PROMPTS, PROMPT_WIDTH)), "prompt_mask": on_rows((PROMPTS, PROMPT_WIDTH))}
    arrays = model_layout(mesh, rules)
    sft = make_sft_step(MODEL_CFG, optimizer, schedule, layout, arrays)
    distill = make_distill_step(MODEL_CFG, MODEL_CFG, CFG, TOKENIZER, optimizer, schedule, layout, arrays)
    sampling = SamplingParams.from_config(CFG.sampling)
    keys = jax.ShapeDtypeStruct((PROMPTS,), jax.random.key(0).dtype, sharding=rows_sharding(mesh, (PROMPTS,), rules))
    completion = (ROWS, CFG.sampling.max_completion_length)
    prm_scores = prm_scoring(str(prm_dir), TOKENIZER, mesh, rules)  # a partial of the compiled scores and the params
    prm = prm_programs(MODEL_CFG, optimizer, mesh, rules)
    trained = {"model": jax.device_put(init_params(MODEL_CFG, rng), param_shardings(MODEL_CFG, mesh, rules)),
               "head": init_head(MODEL_CFG)}
    labelled = PRMRows(tokens=on_rows((ROWS, SEQ_LEN)), mask=on_rows((ROWS, SEQ_LEN), bool),
                       step_end=on_rows((ROWS, SEQ_LEN), bool), step_of=on_rows((ROWS, SEQ_LEN)),
                       soft=on_rows((ROWS, 4), jnp.float32), hard=on_rows((ROWS, 4), bool))
    return {
        "sft": sft.lower(state, {key: on_rows((ROWS, SEQ_LEN)) for key in SFT_ROW_KEYS}),
        "distill": distill.lower(state, params, prompts),
        "continuation": compiled_sampler(mesh, rules).lower(params, *prompts.values(), keys, MODEL_CFG, sampling,
                                                            GROUP, TOKENIZER.stop_ids, TOKENIZER.pad_id),
        "prm_scores": prm_scores.func.lower(*prm_scores.args, on_rows((ROWS, PROMPT_WIDTH)),
                                            on_rows((ROWS, PROMPT_WIDTH)), on_rows(completion), on_rows(completion)),
        "prm_update": prm.update.lower(trained, prm.init(trained), labelled),
    }


prm_dir = prm_folder()
results = {mesh: {name: compiled_facts(lowered.compile()) for name, lowered in compiled_programs(mesh, prm_dir).items()}
           for mesh in MESHES}
with open(OUT_PATH, "w") as out:
    json.dump(results, out)
