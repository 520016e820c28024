"""`rlreason train` as 2 local processes of 2 CPU devices (launch/local.py, as users launch it) computes what one
process of 4 devices computes on the same mesh, and writes its outputs once, not once per process.

Two layouts of the run in tests/parallel/grpo_run_settings.py, 3 steps each:
  fsdp_across_processes   mesh 1x2x2, 8 prompts: each process holds half of every weight matrix (FSDP across the
                          process boundary), loads and samples 4 of the prompts, and saves its half of the model.
                          Operands of 1 or 2 digits, not zero-padded, make prompts of several lengths, and each
                          batch is cut to its longest prompt (sampling.prompt_bucket=1): the processes agree on
                          a width that neither's own 4 prompts may show.
  group_across_processes  mesh 1x1x4, 3 prompts x 4 completions: the tensor axis spans both processes and every
                          process feeds all prompts. Scoring splits the 12 rows over all 4 devices, 3 each, so
                          group 1 (rows 4-7) is scored on both processes (rows 4, 5 on device 1 of process 0;
                          rows 6, 7 on device 2 of process 1) and its rewards meet again for its group statistics.

Every process walks the same global prompt stream and keeps its own rows of each batch (rlreason.data.pipeline),
so both runs train on the same, varied prompts.

Tolerances: grpo_run_settings.py derives them from the computation (float32 reduction order; Adam with
eps = lr so that a float-noise gradient difference is not amplified into a +-lr step). The FSDP layout adds in
the same order as one process (params and metrics agree to float32 rounding); the group layout's tensor
all-reduces cross the process boundary and add in another order. The sampled completions and their rewards in
samples.jsonl must be equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from grpo_run_settings import CONFIG, METRIC_ATOL, METRIC_RTOL, grpo_settings, param_tolerance
from rlreason.models.store import load_model
from rlreason.parallel.mesh import MESH_AXES
from rlreason.train.loop import TIMING_KEYS
from rlreason.verifiers.bridge import scoring_layout

pytestmark = pytest.mark.multiprocess

STEPS = 3
LAYOUTS = {
    "fsdp_across_processes": ["mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2", "train.batch_size=8", "task.max_digits=2",
                              "task.zero_pad=false", "sampling.prompt_bucket=1"],
    "group_across_processes": ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=4", "train.batch_size=3"],
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def runs(request, tmp_path_factory, run_python, tiny_base_model) -> tuple[Path, Path]:
    """(output folder of the 2-process run, of the 1-process run) of one layout."""
    directory = tmp_path_factory.mktemp(request.param)
    settings = [CONFIG, *grpo_settings(tiny_base_model), *LAYOUTS[request.param],
                f"train.steps={STEPS}", "train.sample_every=1"]
    two, one = directory / "two_processes", directory / "one_process"
    run_python(["launch/local.py", "--num-processes", "2", "--devices-per-process", "2", "--timeout", "400",
                "--heartbeat-timeout", "10", *settings, f"train.out_dir={two}"], timeout=450)
    run_python(["-m", "rlreason", "train", "--quiet", *settings, "distributed.local_device_count=4",
                f"train.out_dir={one}"], timeout=450)
    return two, one


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_group_is_scored_on_both_processes_in_the_group_layout():
    """The premise of group_across_processes: its 12 rows are scored split over all 4 devices, 3 rows each (the
    4 tensor devices hold the same rows and share them out)."""
    assert scoring_layout(AbstractMesh((1, 1, 4), MESH_AXES), 3 * 4) == (("data", "fsdp"), ("tensor",))


def test_outputs_are_written_once(runs):
    """The same files as the 1-process run (one metrics.jsonl, samples.jsonl, model/), one metrics row per step."""
    two, one = runs
    assert sorted(path.name for path in two.iterdir()) == sorted(path.name for path in one.iterdir())
    assert {"metrics.jsonl", "samples.jsonl", "config.yaml", "model"} <= {path.name for path in two.iterdir()}
    assert [row["step"] for row in json_lines(two / "metrics.jsonl")] == list(range(1, STEPS + 1))


def test_metrics_match_one_process(runs):
    two, one = (json_lines(run / "metrics.jsonl") for run in runs)
    assert any(row["reward_std"] > 0 for row in one), "rewards never varied within a group: nothing is compared"
    for sharded, reference in zip(two, one, strict=True):
        assert sharded.keys() == reference.keys()
        for key in reference.keys() - set(TIMING_KEYS):
            np.testing.assert_allclose(sharded[key], reference[key], rtol=METRIC_RTOL, atol=METRIC_ATOL,
                                       err_msg=f"step {reference['step']}: {key}")


def test_samples_match_one_process(runs):
    two, one = (json_lines(run / "samples.jsonl") for run in runs)
    assert len(one) == 4 * STEPS
    assert two == one


def test_saved_model_matches_one_process(runs):
    sharded, reference = (load_model(run / "model")[0] for run in runs)
    tolerance = param_tolerance([row["grad_norm"] for row in json_lines(runs[1] / "metrics.jsonl")])
    assert jax.tree.structure(sharded) == jax.tree.structure(reference)
    for (path, expected), leaf in zip(jax.tree_util.tree_leaves_with_path(reference), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(leaf, expected, rtol=0, atol=tolerance, err_msg=jax.tree_util.keystr(path))
    difference = np.sqrt(sum(np.sum((leaf - expected) ** 2)
                             for leaf, expected in zip(jax.tree.leaves(sharded), jax.tree.leaves(reference))))
    assert difference <= tolerance
