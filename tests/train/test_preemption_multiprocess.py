"""Preemption of a multi-process run: SIGTERM reaches one process only, yet every process stops after the same
step, they save one checkpoint together and exit with the preemption code; rerun, the run resumes from it.
The per-step vote that makes them agree is also checked on its own, without training (cheap)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import portpicker
import pytest

from train_runs import REPO, STEPS, child_env, metric_rows, saved_steps, train_command, wait_for_steps

pytestmark = pytest.mark.multiprocess

PREEMPTED_EXIT_CODE = 75
PROCESSES = 2


def start_processes(model_dir, out_dir) -> list[subprocess.Popen]:
    """The run as two processes of one CPU device each, the batch split between them (mesh.data=2)."""
    port = portpicker.pick_unused_port()
    return [subprocess.Popen(train_command(
        model_dir, out_dir, "checkpoint.every_steps=0", "mesh.data=2", "distributed.mode=manual",
        f"distributed.coordinator_address=127.0.0.1:{port}", f"distributed.num_processes={PROCESSES}",
        f"distributed.process_id={index}", "distributed.local_device_count=1", "distributed.heartbeat_timeout_s=10"),
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(PROCESSES)]


@pytest.mark.slow  # two processes compile the step, twice
def test_sigterm_to_one_process_stops_every_process_at_the_same_step(tiny_base_model, tmp_path):
    processes = start_processes(tiny_base_model, tmp_path)
    try:
        wait_for_steps(processes[0], tmp_path, 1)
        processes[1].send_signal(signal.SIGTERM)  # the main process (0) is not told
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    stopped_at = len(metric_rows(tmp_path))
    assert 1 <= stopped_at < STEPS
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
        assert f"stopped after step {stopped_at} of {STEPS} and saved checkpoint" in stderr
    checkpoint = tmp_path / "checkpoints" / str(stopped_at)
    assert saved_steps(tmp_path / "checkpoints") == [stopped_at]
    assert sorted(path.name for path in (checkpoint / "data").glob("process_*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]

    processes = start_processes(tiny_base_model, tmp_path)
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert f"resuming from checkpoint {checkpoint}" in outputs[0][0]
    assert [row["step"] for row in metric_rows(tmp_path)] == list(range(1, STEPS + 1))


def test_every_process_is_told_the_same_vote():
    """The per-step vote alone: process i of 3 raises its flag at step 2 + i; all are told from step 2 on."""
    port = portpicker.pick_unused_port()
    processes = [subprocess.Popen([sys.executable, "tests/train/scripts/vote.py", str(index), "3", str(port)],
                                  cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for index in range(3)]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        assert json.loads(stdout.strip().splitlines()[-1]) == [[False, False]] + [[True, False]] * 4
