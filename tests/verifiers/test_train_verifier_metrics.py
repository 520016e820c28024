"""The train loop's view of the verifiers: each step's failed calls in metrics.jsonl, and a pool that cannot
start stopping the run with VerifierPoolError after the step (on every process: see `bridge`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlreason.train.loop import train
from rlreason.verifiers import reward_function
from rlreason.verifiers.bridge import VerifierPoolError
from tiny_run import tiny_config

import stress_rewards  # noqa: F401 - registers stress_crash

HERE = Path(__file__).parent
ROWS_PER_STEP = 16  # tiny config: 4 prompts x 4 generations


@reward_function("test_isolated_in_a_test_module", isolated=True)
def isolated_in_a_test_module(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """Worker processes cannot import this module (its folder is not on their path), so its pool cannot start."""
    return 1.0


def run(tmp_path, model_dir, reward: str) -> None:
    train(tiny_config(f"train.model_dir={model_dir}", f"train.out_dir={tmp_path}", "checkpoint.every_steps=0",
                      f"grpo.rewards=[{{name: r1_format}}, {{name: {reward}}}]", "grpo.accuracy_reward=r1_format",
                      "grpo.verifier_batch_deadline_s=2.0"), show_progress=False)


@pytest.mark.slow  # every call kills a worker: 32 worker starts, each importing sympy
def test_each_step_reports_its_killed_and_timed_out_calls(tiny_base_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))  # workers
    run(tmp_path, tiny_base_model, "stress_crash")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        # Every call crashes its worker; those the deadline reached first (replacements start slowly) time out.
        assert row["verifier/killed_calls"] >= 1
        assert row["verifier/killed_calls"] + row["verifier/timed_out_calls"] == ROWS_PER_STEP
        assert row["rewards/stress_crash"] == 0.0


def test_a_pool_that_cannot_start_stops_the_run_after_the_first_step(tiny_base_model, tmp_path):
    with pytest.raises(VerifierPoolError, match=r"worker processes of process\(es\) \[0\] could not start"):
        run(tmp_path, tiny_base_model, "test_isolated_in_a_test_module")
    assert not (tmp_path / "metrics.jsonl").read_text()  # the failed step is not logged
