"""QLoRA's GRPO step on meshes of 8 CPU devices computes what it computes on one device, and lays the adapters and
the quantized base out by the rule table: each adapter splits like its weight's input axes (a) or output axes
(b), its rank axis replicated; the quantized codes split like the weight.

The run is tests/parallel/grpo_run_settings.py's with NF4 LoRA on every projection. Tolerances as in
test_sharded_grpo_step.py, with the adapters' contractions added to the chain of reductions: per layer, seven
low-rank products of at most 96 inputs and rank 4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from grpo_run_settings import CONFIG, METRIC_RTOL, REDUCTION_TERMS, UNIT_ROUNDOFF, grpo_settings, param_tolerance
from rule_layouts import expected_specs
from test_sharded_grpo_step import at_step, named, without_unit_axes

MESHES = ["2x2x2", "1x8x1"]
STEPS = 2
SCRIPT = "tests/parallel/scripts/grpo_steps.py"
LORA = ["lora.rank=4", "lora.alpha=8", "lora.base_quantization=nf4"]
TOLERANCE = 2 * (REDUCTION_TERMS + 2 * 7 * (96 + 4)) * UNIT_ROUNDOFF
TINY_KV_HEADS = 2
INPUT_AXES = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1, "up_proj": 1, "down_proj": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_python, tiny_base_model) -> dict[str, np.ndarray]:
    directory = tmp_path_factory.mktemp("sharded_lora")
    settings = [CONFIG, *grpo_settings(tiny_base_model), "train.batch_size=8", *LORA]
    run_python([SCRIPT, str(directory / "single.npz"), str(STEPS), "1x1x1", *settings], timeout=600)
    run_python([SCRIPT, str(directory / "meshes.npz"), str(STEPS), ",".join(MESHES), *settings], timeout=900)
    outputs = {}
    for name in ("single", "meshes"):
        with np.load(directory / f"{name}.npz") as stored:
            outputs.update(stored)
    return outputs


def metrics(runs, mesh: str, step: int) -> dict[str, float]:
    return {name: float(value) for name, value in at_step(runs, f"{mesh}/metric", step).items()}


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("step", range(1, STEPS + 1))
def test_samples_metrics_and_adapters_match_the_single_device(runs, mesh, step):
    reference = metrics(runs, "1x1x1", step)
    assert reference["grad_norm"] > 1e-2 and reference["reward_std"] > 0  # the comparison's premise
    for key in ("tokens", "completion_mask", "rewards"):
        np.testing.assert_array_equal(runs[f"{mesh}/samples/{key}/{step}"], runs[f"1x1x1/samples/{key}/{step}"])
    sharded = metrics(runs, mesh, step)
    for key in reference:
        np.testing.assert_allclose(sharded[key], reference[key], rtol=TOLERANCE, atol=TOLERANCE, err_msg=key)
    adapters, single = at_step(runs, f"{mesh}/params", step), at_step(runs, "1x1x1/params", step)
    assert set(single) == {f"['layers']['{name}']['{part}']" for name in INPUT_AXES for part in "ab"}
    bound = param_tolerance([metrics(runs, "1x1x1", done)["grad_norm"] for done in range(1, step + 1)])
    for name in single:
        np.testing.assert_allclose(adapters[name], single[name], rtol=0, atol=bound * TOLERANCE / METRIC_RTOL,
                                   err_msg=name)


@pytest.mark.parametrize("mesh", MESHES)
def test_adapters_and_the_quantized_base_are_laid_out_by_the_rules(runs, mesh):
    table = {name: without_unit_axes(spec, mesh)
             for name, spec in expected_specs(int(mesh.split("x")[2]), TINY_KV_HEADS).items()}
    specs = {key: json.loads(str(value)) for key, value in named(runs, f"{mesh}/spec").items()}
    for name, inputs in INPUT_AXES.items():
        weight = table[f"['layers']['{name}']"]
        a = weight[:1 + inputs] + [None]
        b = weight[:1] + [None] + weight[1 + inputs:]
        for where in ("params", "opt_state[1][0].mu", "opt_state[1][0].nu"):
            assert specs[f"{where}['layers']['{name}']['a']"] == a, (where, name)
            assert specs[f"{where}['layers']['{name}']['b']"] == b, (where, name)
        assert specs[f"base['layers']['{name}'].codes"] == weight
        assert specs[f"base['layers']['{name}'].scales"][:-1] == weight[:-1]
    assert not any(key.startswith("ref_params") for key in specs)  # the base is the reference
