"""A multi-turn GRPO step (the calculator enabled) on meshes of 8 CPU devices computes what it computes on one
device: tests/parallel/scripts/tool_steps.py runs the scripted model of tests/sampling/scripted.py, which calls the
calculator in some of its sampled completions. The host callback that answers the calls sees every row however
the rows are split, so the inserted tokens and masks must be identical; sampling draws from a partitionable PRNG,
so the sampled tokens are too. Metrics and params within float32 reduction noise (Adam runs with eps = lr)."""

from __future__ import annotations

import numpy as np
import pytest

MESHES = ["8x1x1", "2x2x2"]
SCRIPT = "tests/parallel/scripts/tool_steps.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_python) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("sharded_tools") / "runs.npz"
    run_python([SCRIPT, str(out), ",".join(MESHES)], timeout=900)
    with np.load(out) as stored:
        return dict(stored)


def test_the_reference_run_called_the_tool_and_kept_the_results_out_of_the_loss(runs):
    observations = runs["1x1x1/samples/observation_mask"] > 0
    starts = np.diff(observations.astype(int), axis=1, prepend=0) == 1
    assert starts.sum() >= 3
    assert np.all(runs["1x1x1/samples/tokens"][starts] == runs["result_open_id"])
    assert np.all(runs["1x1x1/samples/logprobs"][observations] == 0)
    assert runs["1x1x1/metric/loss_tokens"] == runs["1x1x1/samples/completion_mask"].sum() - observations.sum()
    assert runs["1x1x1/metric/reward_std"] > 0 and runs["1x1x1/metric/grad_norm"] > 1e-2


@pytest.mark.parametrize("mesh", MESHES)
def test_the_mesh_step_equals_the_single_device_step(runs, mesh):
    for key in ("tokens", "completion_mask", "observation_mask"):
        np.testing.assert_array_equal(runs[f"{mesh}/samples/{key}"], runs[f"1x1x1/samples/{key}"], err_msg=key)
    np.testing.assert_allclose(runs[f"{mesh}/samples/logprobs"], runs["1x1x1/samples/logprobs"], atol=1e-5)
    metrics = [key.removeprefix("1x1x1/") for key in runs if key.startswith("1x1x1/metric/")]
    assert {"metric/tools/calls", "metric/tools/observation_tokens", "metric/tools/policy_length"} <= set(metrics)
    for key in metrics:
        np.testing.assert_allclose(runs[f"{mesh}/{key}"], runs[f"1x1x1/{key}"], rtol=1e-4, atol=1e-6, err_msg=key)
    params = [key for key in runs if key.startswith("1x1x1/params/")]
    assert params
    for key in params:
        np.testing.assert_allclose(runs[key.replace("1x1x1", mesh, 1)], runs[key], atol=1e-5, err_msg=key)
