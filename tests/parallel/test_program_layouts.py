"""No device does another device's work in the mesh programs besides the GRPO step (whose update
test_update_layout.py judges): the `rlreason sft` update, the `rlreason distill` step, the sampler of step-level
search (beam search, MCTS, search rollouts and PRM labels), evaluation's PRM scores and `rlreason prm`'s update
each trace their forward passes under the model's activation layout (rlreason.parallel.rules.model_layout), so
they gather weights, never rows.

Judged from the compiled programs on 8 simulated CPU devices (tests/parallel/scripts/program_hlo.py). Each
program carries 32 rows (8 prompts x 4 samples); row-carrying arrays then lead with 32, 16 or 8 rows, sizes no
parameter dimension of the tiny model has (48, 96, 12, 4, 2). Without the layout, every program gathered
activations or token ids along the rows on the fsdp meshes (checked by replacing model_layout with no layout).
"""

from __future__ import annotations

import json

import pytest
from hlo_checks import row_gathers

MESHES = ["1x1x1", "8x1x1", "1x8x1", "2x2x2"]
PROGRAMS = ["sft", "distill", "continuation", "prm_scores", "prm_update"]
ROW_COUNTS = {32, 16, 8}


@pytest.fixture(scope="module")
def compiled(run_python, tiny_base_model, tmp_path_factory) -> dict:
    directory, results = tmp_path_factory.mktemp("program_hlo"), {}
    for name, meshes in (("single", MESHES[:1]), ("meshes", MESHES[1:])):
        run_python(["tests/parallel/scripts/program_hlo.py", str(directory / f"{name}.json"), ",".join(meshes),
                    str(tiny_base_model)], timeout=900)
        results.update(json.loads((directory / f"{name}.json").read_text()))
    return results


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("mesh", MESHES[1:])
def test_no_rows_are_gathered(compiled, mesh, program):
    """An all-gather along the first dimension of an array that leads with a row count is rows moving between
    devices. (Tensor parallelism gathers a row's logits over the vocabulary for sampling: dimension 1, kept.)"""
    assert row_gathers(compiled[mesh][program]["all_gathers"], ROW_COUNTS) == []


@pytest.mark.parametrize("program", PROGRAMS)
def test_fsdp_gathers_weights(compiled, program):
    """On the pure fsdp mesh the programs do gather (weights): the check above is not vacuous."""
    assert compiled["1x8x1"][program]["all_gathers"]


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("mesh", ["8x1x1", "1x8x1"])
def test_each_device_computes_its_share(compiled, mesh, program):
    """Without a tensor axis each device runs an eighth of the rows: an eighth of one device's FLOPs (within 10%:
    the optimizer's update of replicated leaves and the metrics' reductions are not split)."""
    share = compiled[mesh][program]["flops"] / compiled["1x1x1"][program]["flops"]
    assert share == pytest.approx(1 / 8, rel=0.1)


@pytest.mark.parametrize("program", PROGRAMS)
def test_tensor_parallelism_splits_more_than_the_rows(compiled, program):
    """On 2x2x2 the rows are split 4 ways and the tensor axis splits the projections' heads and hidden units:
    each device computes between an eighth and a quarter of one device's FLOPs (the sampler's vocabulary-wide
    choice of each token runs on both tensor devices of its rows)."""
    share = compiled["2x2x2"][program]["flops"] / compiled["1x1x1"][program]["flops"]
    assert 1 / 8 * 0.95 <= share < 1 / 4
