"""Runs that survive: killed at a random step, stopped by SIGTERM, or left with a corrupt newest checkpoint, a
resumed `rlreason train` ends exactly where an uninterrupted run does (metrics, samples and params).

Each child run compiles the step afresh (the step's host callback keeps it out of the persistent compile cache),
so the default run keeps to five children: the reference, one kill and its resume, one SIGTERM and its resume.
"""

from __future__ import annotations

import random
import shutil
import signal

import pytest

from train_runs import (STEPS, assert_same_run, metric_rows, run_train, saved_steps, start_train,
                        wait_for_steps)

PREEMPTED_EXIT_CODE = 75


@pytest.fixture(scope="module")
def reference_run(tiny_base_model, tmp_path_factory):
    """An uninterrupted run that checkpoints every step, keeping the last two."""
    out_dir = tmp_path_factory.mktemp("reference")
    run_train(tiny_base_model, out_dir, "checkpoint.every_steps=1", "checkpoint.keep_last=2")
    assert saved_steps(out_dir / "checkpoints") == [STEPS - 1, STEPS]
    return out_dir


def kill_and_resume(model_dir, reference_dir, out_dir, trial: int) -> None:
    """SIGKILLs a run at a seeded random step (saves every step, so often mid-save), then resumes it."""
    kill_at = random.Random(trial).randint(3, STEPS - 1)
    process = start_train(model_dir, out_dir, "checkpoint.every_steps=1", "checkpoint.keep_last=2")
    wait_for_steps(process, out_dir, kill_at)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    checkpoints = saved_steps(out_dir / "checkpoints")
    assert checkpoints, f"killed after {kill_at} steps with no complete checkpoint"

    resumed = run_train(model_dir, out_dir, "checkpoint.every_steps=1", "checkpoint.keep_last=2")
    assert f"resuming from checkpoint {out_dir / 'checkpoints' / str(checkpoints[-1])}" in resumed.stdout
    assert_same_run(out_dir, reference_dir)


def test_run_killed_at_a_random_step_resumes_to_the_same_result(tiny_base_model, reference_run, tmp_path):
    kill_and_resume(tiny_base_model, reference_run, tmp_path, trial=0)


@pytest.mark.slow
@pytest.mark.parametrize("trial", [1, 2])
def test_more_kills_at_random_steps(tiny_base_model, reference_run, tmp_path, trial):
    kill_and_resume(tiny_base_model, reference_run, tmp_path, trial)


def test_sigterm_saves_the_current_step_and_exits_with_its_own_code(tiny_base_model, reference_run, tmp_path):
    # No scheduled saves: the checkpoint can only come from SIGTERM.
    process = start_train(tiny_base_model, tmp_path, "checkpoint.every_steps=0")
    wait_for_steps(process, tmp_path, 1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == PREEMPTED_EXIT_CODE, f"exit {process.returncode} (did the run end first?):\n{stderr}"
    stopped_at = len(metric_rows(tmp_path))
    assert 1 <= stopped_at < STEPS
    assert saved_steps(tmp_path / "checkpoints") == [stopped_at]
    checkpoint = tmp_path / "checkpoints" / str(stopped_at)
    assert (f"SIGTERM received by a process of the run: stopped after step {stopped_at} of {STEPS} and saved "
            f"checkpoint {checkpoint}; run the same command again to resume") in stderr

    resumed = run_train(tiny_base_model, tmp_path, "checkpoint.every_steps=0")
    assert f"resuming from checkpoint {checkpoint}" in resumed.stdout
    assert_same_run(tmp_path, reference_run)


@pytest.mark.slow  # the fallback itself is checked in the default run by test_checkpoint.py, without a compile
def test_a_truncated_newest_checkpoint_resumes_from_the_previous_one_with_a_warning(reference_run, tmp_path,
                                                                                    tiny_base_model):
    out_dir = tmp_path / "run"
    shutil.copytree(reference_run, out_dir)
    newest = out_dir / "checkpoints" / str(STEPS)
    biggest = max((path for path in (newest / "state").rglob("*") if path.is_file()), key=lambda p: p.stat().st_size)
    truncated_size = biggest.stat().st_size // 2
    with open(biggest, "r+b") as file:
        file.truncate(truncated_size)

    resumed = run_train(tiny_base_model, out_dir, "checkpoint.every_steps=1", "checkpoint.keep_last=2")
    previous = out_dir / "checkpoints" / str(STEPS - 1)
    assert f"checkpoint {newest} cannot be restored" in resumed.stderr
    assert f"resuming from the previous one, {previous}, instead" in resumed.stderr
    assert f"resuming from checkpoint {previous}" in resumed.stdout
    # The unreadable checkpoint is kept aside, as it was, and the step is saved afresh.
    kept = [path for path in (out_dir / "checkpoints").iterdir() if path.name.startswith(f"{STEPS}.unreadable-")]
    assert len(kept) == 1 and (kept[0] / biggest.relative_to(newest)).stat().st_size == truncated_size
    assert saved_steps(out_dir / "checkpoints") == [STEPS - 1, STEPS]
    assert_same_run(out_dir, reference_run)
