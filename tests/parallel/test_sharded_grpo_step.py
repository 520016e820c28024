"""The GRPO step of the real trainer (`build_trainer` with mesh.* set) on meshes of 8 CPU devices computes what
it computes on one device, two steps in a row, and keeps the state where the rule table says.

The run: tests/parallel/grpo_run_settings.py, 8 prompts x 4 completions (8 divides data * fsdp on every mesh).
Sampling draws from a partitionable PRNG (jax_threefry_partitionable), so a device draws for its rows exactly
the bits one device draws for them: tokens, completion masks and per-function rewards must be identical (a
token could flip only where two noise-perturbed logits tie to within the float noise of ~1e-5).

Tolerances: grpo_run_settings.py derives them from the computation: metrics within 2 * n * u for the n = 2560
float32 terms their reductions chain (3.1e-4 relative), sampler log-probs within the same relative bound of their
magnitude (LOGPROB_ATOL for log-probs down to about -10), and params within the sum of the per-update gradient
differences (Adam runs with eps = lr there, so the update is at most as sensitive to float noise as its gradient).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from grpo_run_settings import CONFIG, METRIC_ATOL, METRIC_RTOL, grpo_settings, param_tolerance
from rule_layouts import expected_specs

MESHES = ["8x1x1", "1x8x1", "2x2x2", "1x2x4"]
STEPS = (1, 2)
LOGPROB_ATOL = 10 * METRIC_RTOL
SCRIPT = "tests/parallel/scripts/grpo_steps.py"
PARAMS_OF_THE_TINY_MODEL = {"['embed']", "['final_norm']", "['layers']['attn_norm']", "['layers']['q_proj']",
                            "['layers']['k_proj']", "['layers']['v_proj']", "['layers']['o_proj']",
                            "['layers']['mlp_norm']", "['layers']['gate_proj']", "['layers']['up_proj']",
                            "['layers']['down_proj']"}  # llama-style: no biases, tied embeddings
TINY_KV_HEADS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_python, tiny_base_model) -> dict[str, np.ndarray]:
    """Both runs' outputs in one dict: the single device under "1x1x1/...", each mesh under its name."""
    directory = tmp_path_factory.mktemp("sharded_grpo")
    settings = [CONFIG, *grpo_settings(tiny_base_model), "train.batch_size=8"]
    run_python([SCRIPT, str(directory / "single.npz"), str(max(STEPS)), "1x1x1", *settings], timeout=600)
    run_python([SCRIPT, str(directory / "meshes.npz"), str(max(STEPS)), ",".join(MESHES), *settings], timeout=900)
    outputs = {}
    for name in ("single", "meshes"):
        with np.load(directory / f"{name}.npz") as stored:
            outputs.update(stored)
    return outputs


def named(runs: dict, prefix: str) -> dict[str, np.ndarray]:
    """The entries under `prefix`/, keyed by the rest of their name."""
    return {key.removeprefix(prefix + "/"): value for key, value in runs.items() if key.startswith(prefix + "/")}


def at_step(runs: dict, prefix: str, step: int) -> dict[str, np.ndarray]:
    """The entries under `prefix`/ recorded at `step` (named NAME/STEP), keyed by NAME."""
    return {key.removesuffix(f"/{step}"): value for key, value in named(runs, prefix).items()
            if key.endswith(f"/{step}")}


def metrics(runs: dict, mesh: str, step: int) -> dict[str, float]:
    return {name: float(value) for name, value in at_step(runs, f"{mesh}/metric", step).items()}


def params(runs: dict, mesh: str, step: int) -> dict[str, np.ndarray]:
    return at_step(runs, f"{mesh}/params", step)


@pytest.mark.parametrize("step", STEPS)
def test_rewards_and_gradients_vary_in_the_reference_run(runs, step):
    """The premise of the comparisons: groups with different rewards, hence nonzero advantages and gradients."""
    reference = metrics(runs, "1x1x1", step)
    assert reference["reward_std"] > 0 and reference["frac_reward_zero_std"] < 1
    assert reference["grad_norm"] > 1e-2 and reference["kl"] > 0


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("step", STEPS)
def test_samples_and_rewards_are_identical(runs, mesh, step):
    for key in ("tokens", "completion_mask", "rewards"):
        np.testing.assert_array_equal(runs[f"{mesh}/samples/{key}/{step}"], runs[f"1x1x1/samples/{key}/{step}"],
                                      err_msg=key)
    np.testing.assert_allclose(runs[f"{mesh}/samples/logprobs/{step}"], runs[f"1x1x1/samples/logprobs/{step}"],
                               rtol=0, atol=LOGPROB_ATOL)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("step", STEPS)
def test_metrics_match_the_single_device(runs, mesh, step):
    sharded, reference = metrics(runs, mesh, step), metrics(runs, "1x1x1", step)
    assert sharded.keys() == reference.keys()
    for key in reference:
        np.testing.assert_allclose(sharded[key], reference[key], rtol=METRIC_RTOL, atol=METRIC_ATOL, err_msg=key)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("step", STEPS)
def test_updated_params_match_the_single_device(runs, mesh, step):
    initial, sharded, reference = params(runs, "1x1x1", 0), params(runs, mesh, step), params(runs, "1x1x1", step)
    assert sharded.keys() == reference.keys() == PARAMS_OF_THE_TINY_MODEL
    tolerance = param_tolerance([metrics(runs, "1x1x1", done)["grad_norm"] for done in range(1, step + 1)])
    for name in reference:
        np.testing.assert_allclose(sharded[name], reference[name], rtol=0, atol=tolerance, err_msg=name)
    difference = np.sqrt(sum(np.sum((sharded[name] - reference[name]) ** 2) for name in reference))
    update = np.sqrt(sum(np.sum((reference[name] - initial[name]) ** 2) for name in reference))
    assert difference <= tolerance < 0.01 * update  # the bound is far below what the steps moved


def without_unit_axes(spec: list, mesh: str) -> list:
    """`spec` with the mesh axes of size 1 left out (they split nothing; compiled outputs do not name them)."""
    sizes = dict(zip(("data", "fsdp", "tensor"), (int(size) for size in mesh.split("x"))))
    return [None if axis is None or sizes[axis] == 1 else axis for axis in spec]


@pytest.mark.parametrize("mesh", MESHES)
def test_state_after_two_steps_is_laid_out_by_the_rules(runs, mesh):
    """Params, the reference params and Adam's two moments per param are split as the table says; the
    optimizer's step counts are replicated."""
    table = {name: without_unit_axes(spec, mesh)
             for name, spec in expected_specs(int(mesh.split("x")[2]), TINY_KV_HEADS).items()}
    specs = {key: json.loads(str(value)) for key, value in named(runs, f"{mesh}/spec").items()}
    expected = {}
    for name in PARAMS_OF_THE_TINY_MODEL:
        for where in (f"params{name}", f"ref_params{name}", f"opt_state[1][0].mu{name}", f"opt_state[1][0].nu{name}"):
            expected[where] = table[name]
    expected.update({"opt_state[1][0].count": [], "opt_state[1][2].count": []})
    assert specs == expected


def test_fsdp_over_8_devices_holds_an_eighth_of_params_and_optimizer_state(runs):
    """The trainer's state on 1x8x1 against the single device's: every leaf with an `embed` dim is split 8 ways;
    the norms (0.5% of the params) and the optimizer's step counts stay whole on each device."""
    table = expected_specs(1, TINY_KV_HEADS)
    loaded = params(runs, "1x1x1", 0)
    single_params = int(runs["1x1x1/bytes_per_device/params"])
    assert single_params == sum(leaf.nbytes for leaf in loaded.values())
    expected = sum(leaf.nbytes // (8 if "fsdp" in table[name] else 1) for name, leaf in loaded.items())
    fsdp_params, fsdp_optimizer = (int(runs[f"1x8x1/bytes_per_device/{part}"]) for part in ("params", "opt_state"))
    assert fsdp_params == expected
    assert single_params / 8 <= fsdp_params <= 1.05 * single_params / 8
    single_optimizer = int(runs["1x1x1/bytes_per_device/opt_state"])
    assert 2 * single_params <= single_optimizer <= 2 * single_params + 16  # two moments and two int32 counts
    assert single_optimizer - 2 * single_params == fsdp_optimizer - 2 * fsdp_params  # the counts, replicated


def test_a_batch_that_does_not_split_over_the_mesh_is_a_config_error(runs):
    message = str(runs["errors/batch_6_on_8x1x1"])
    assert "'train.batch_size'" in message and "mesh.data=8" in message and "mesh.fsdp=1" in message
