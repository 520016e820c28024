"""Runs that survive: killed at a random step, stopped by SIGTERM or Ctrl-C, or left with a corrupt newest
checkpoint, a resumed `rlreason train` ends exactly where an uninterrupted run does (metrics, samples, params
and optimizer state).

Each child run compiles the step afresh (the step's host callback keeps it out of the persistent compile cache),
so the default run keeps to eight children: the reference, one kill and its resume; a second reference with
one-step epochs and a warmup + cosine learning rate, one Ctrl-C and its resume; and one run aborted by a
second Ctrl-C. SIGTERM, handled as SIGINT is, is stopped and resumed in the slow run.
"""

from __future__ import annotations

import math
import random
import shlex
import shutil
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from train_runs import (STEPS, assert_same_run, metric_rows, run_train, saved_steps, start_train, train_command,
                        wait_for_steps)

PREEMPTED_EXIT_CODE = 75
ABORTED_EXIT_CODE = 130
# One-step epochs (task.num_train = train.batch_size): every stop, and so every resume, is at an epoch boundary.
# The learning rate warms up over 2 updates, then follows a cosine down to 0.1x: a stop at any step lands in
# the middle of a schedule that changes every step.
LEARNING_RATE, WARMUP, MIN_LR_RATIO = 1e-3, 2, 0.1
EPOCH_OVERRIDES = ["task.num_train=4", "train.batch_size=4", f"grpo.optim.learning_rate={LEARNING_RATE}",
                   f"grpo.optim.warmup_steps={WARMUP}", "grpo.optim.schedule=cosine",
                   f"grpo.optim.min_lr_ratio={MIN_LR_RATIO}", "checkpoint.every_steps=0"]


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


@pytest.mark.slow  # the default run stops a run with SIGINT, which takes the same path (see below)
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
            f"checkpoint {checkpoint}; run the same command again to resume\nto resume: ") in stderr
    assert f"to resume: {shlex.join(train_command(tiny_base_model, tmp_path, 'checkpoint.every_steps=0'))}\n" in stderr

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


def expected_learning_rate(update: int) -> float:
    """The learning rate of 0-based update `update` of STEPS (one update per step), from the formula: linear
    warmup from 0 over WARMUP updates, then a cosine from LEARNING_RATE to MIN_LR_RATIO x LEARNING_RATE."""
    if update < WARMUP:
        return LEARNING_RATE * update / WARMUP
    progress = (update - WARMUP) / (STEPS - WARMUP)
    return LEARNING_RATE * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def saved_state(out_dir, step: int) -> dict:
    """The TrainState of checkpoint `step` as saved (nested dicts of numpy arrays)."""
    return ocp.StandardCheckpointer().restore(out_dir / "checkpoints" / str(step) / "state")


@pytest.fixture(scope="module")
def epoch_reference_run(tiny_base_model, tmp_path_factory):
    """An uninterrupted run with one-step epochs and a warmup + cosine schedule."""
    out_dir = tmp_path_factory.mktemp("epoch_reference")
    run_train(tiny_base_model, out_dir, *EPOCH_OVERRIDES)
    return out_dir


def test_ctrl_c_saves_and_the_resumed_run_continues_the_epochs_and_the_schedule(tiny_base_model,
                                                                              epoch_reference_run, tmp_path):
    process = start_train(tiny_base_model, tmp_path, *EPOCH_OVERRIDES)
    wait_for_steps(process, tmp_path, 1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == PREEMPTED_EXIT_CODE, f"exit {process.returncode} (did the run end first?):\n{stderr}"
    stopped_at = len(metric_rows(tmp_path))
    assert 1 <= stopped_at < STEPS and saved_steps(tmp_path / "checkpoints") == [stopped_at]
    checkpoint = tmp_path / "checkpoints" / str(stopped_at)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert (f"SIGINT received by a process of the run: stopped after step {stopped_at} of {STEPS} and saved "
            f"checkpoint {checkpoint}; run the same command again to resume\nto resume: ") in stderr

    resumed = run_train(tiny_base_model, tmp_path, *EPOCH_OVERRIDES)
    assert f"resuming from checkpoint {checkpoint} (step {stopped_at} of {STEPS})" in resumed.stdout
    assert_same_run(tmp_path, epoch_reference_run)  # every remaining step trained, on the same prompts
    learning_rates = [row["learning_rate"] for row in metric_rows(tmp_path)]
    # float32 schedule arithmetic against float64: a few float32 ulps of LEARNING_RATE.
    np.testing.assert_allclose(learning_rates, [expected_learning_rate(update) for update in range(STEPS)],
                               rtol=0, atol=8 * np.finfo(np.float32).eps * LEARNING_RATE)
    # The optimizer state (Adam's moments and the update count the schedule reads) is the uninterrupted run's.
    final, reference = saved_state(tmp_path, STEPS), saved_state(epoch_reference_run, STEPS)
    for leaf, reference_leaf in zip(jax.tree.leaves(final["opt_state"]), jax.tree.leaves(reference["opt_state"]),
                                    strict=True):
        np.testing.assert_array_equal(leaf, reference_leaf)
    counts = [leaf for path, leaf in jax.tree.leaves_with_path(final["opt_state"])
              if "count" in jax.tree_util.keystr(path)]
    assert counts and all(int(count) == STEPS for count in counts), counts


def test_a_second_ctrl_c_aborts_at_once_without_saving(tiny_base_model, tmp_path):
    process = start_train(tiny_base_model, tmp_path, "checkpoint.every_steps=0")
    wait_for_steps(process, tmp_path, 1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.01)  # two key presses, the second while the first step after them runs
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == ABORTED_EXIT_CODE, f"exit {process.returncode}:\n{stderr}"
    assert "SIGINT received again: aborted without saving" in stderr and "Traceback" not in stderr, stderr
    assert len(metric_rows(tmp_path)) < STEPS
