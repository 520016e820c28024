"""No device does another device's work in the compiled GRPO update: minibatches, micro-batches and the
reference pass take each device's own rows (strided splits, rlreason.rl.step.split_rows), so the update moves
no rows between devices and each device computes its share.

Judged from the compiled program on 8 simulated CPU devices (tests/parallel/scripts/update_hlo.py): the run
has 8 prompts x 4 completions = 32 rows, 2 minibatches of 16 rows, each summed over 2 micro-batches of 8, two
passes (the second dealing the rows to the minibatches afresh, grpo.shuffle_minibatches), and a reference model.
Row-carrying arrays lead with 32, 16 or 8 rows (4, 2 or 1 per device), sizes no parameter
dimension of the tiny model has (48, 96, 12, 4, 2). FSDP all-gathers weights by design; an all-gather whose
result leads with a row count would be rows moving.
"""

from __future__ import annotations

import json
import math

import pytest

from grpo_run_settings import CONFIG, TINY_MODEL
from hlo_checks import leading_dim

MESHES = ["1x1x1", "8x1x1", "1x8x1", "2x2x2", "2x4x1"]
ROW_COUNTS = {32, 16, 8}
SETTINGS = [*TINY_MODEL, "tokenizer.vocab_size=80", "task.min_digits=1", "task.max_digits=1",
            "task.num_train=64", "sampling.max_prompt_length=16", "sampling.max_completion_length=24",
            "train.batch_size=8", "grpo.num_generations=4", "grpo.num_minibatches=2",
            "grpo.gradient_accumulation_steps=2", "grpo.num_iterations=2", "grpo.beta=0.04"]


@pytest.fixture(scope="module")
def compiled(run_python, tiny_base_model, tmp_path_factory) -> dict:
    directory, results = tmp_path_factory.mktemp("update_hlo"), {}
    for name, meshes in (("single", MESHES[:1]), ("meshes", MESHES[1:])):
        run_python(["tests/parallel/scripts/update_hlo.py", str(directory / f"{name}.json"), ",".join(meshes),
                    CONFIG, f"train.model_dir={tiny_base_model}", *SETTINGS], timeout=900)
        results.update(json.loads((directory / f"{name}.json").read_text()))
    return results


@pytest.mark.parametrize("mesh", MESHES[1:])
def test_no_rows_are_gathered(compiled, mesh):
    """On fsdp meshes the rows and the weights' hidden size are split over the same axis: without the model's
    activation layout (rlreason.parallel.rules.model_layout) the compiler gathered activations or token ids."""
    shapes = [gather["shape"] for gather in compiled[mesh]["all_gathers"]]
    assert [shape for shape in shapes if leading_dim(shape) in ROW_COUNTS] == []


def elements(shape: str) -> int:
    dims = shape[shape.index("[") + 1:-1]
    return math.prod(int(dim) for dim in dims.split(",")) if dims else 1


def test_pure_data_parallelism_gathers_only_per_device_scalars(compiled):
    """Params are replicated on 8x1x1, so the update gathers no weights either: at most one value per device
    (flags and counts of the step's reductions), never a slice of rows (the contiguous split gathered those)."""
    shapes = [gather["shape"] for gather in compiled["8x1x1"]["all_gathers"]]
    assert all(elements(shape) <= 8 for shape in shapes), shapes


@pytest.mark.parametrize("mesh", MESHES[1:])
def test_each_device_computes_its_share(compiled, mesh):
    """Per-device FLOPs of the update are an eighth of one device's (within 25%: the replicated optimizer
    update and the loss reductions are not split, and tensor parallelism adds no FLOPs but reshapes some)."""
    share = compiled[mesh]["flops"] / compiled["1x1x1"]["flops"]
    assert share == pytest.approx(1 / 8, rel=0.25)
