"""`rlreason train` on the tiny model as a child process, for the tests that kill, stop and resume it.

The run: 6 GRPO steps with a reference model (grpo.beta > 0, so reference params are checkpointed too) and a
reward that often varies within a group (the last number of the completion), so that the params move.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from tiny_run import TINY_OVERRIDES
from rlreason.models.store import load_model
from rlreason.train.loop import TIMING_KEYS

REPO = Path(__file__).resolve().parents[2]
STEPS = 6
RUN_OVERRIDES = [*TINY_OVERRIDES, f"train.steps={STEPS}", "grpo.beta=0.04", "train.sample_every=2",
                 "grpo.rewards=[{name: gsm8k_last_number}, {name: r1_format, weight: 0.2}]",
                 "grpo.accuracy_reward=gsm8k_last_number", "checkpoint.every_seconds=0"]
CHILD_TIMEOUT_S = 300


def child_env() -> dict[str, str]:
    """The repo importable, CPU only, and the test suite's compile cache (keyed by the program: no effect on
    results), so that each child compiles the step only once across the suite."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/rlreason-jax-tests"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return env


def train_command(model_dir: Path, out_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rlreason", "train", "configs/demo_cpu.yaml", *RUN_OVERRIDES,
            f"train.model_dir={model_dir}", f"train.out_dir={out_dir}", *overrides, "--quiet"]


def start_train(model_dir: Path, out_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(train_command(model_dir, out_dir, *overrides), cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_train(model_dir: Path, out_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Runs a training child to the end; fails the test on a non-zero exit or a missing closing summary."""
    result = subprocess.run(train_command(model_dir, out_dir, *overrides), cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert result.returncode == 0, f"rlreason train exited with {result.returncode}:\n{result.stderr[-4000:]}"
    assert (f"train: {STEPS} steps done. model {out_dir / 'model'}; metrics {out_dir / 'metrics.jsonl'}; samples "
            f"{out_dir / 'samples.jsonl'}; checkpoints {out_dir / 'checkpoints'}") in result.stdout, result.stdout
    return result


def wait_for_steps(process: subprocess.Popen, out_dir: Path, steps: int) -> None:
    """Returns as soon as metrics.jsonl holds `steps` rows, with the child still running."""
    metrics, deadline = out_dir / "metrics.jsonl", time.monotonic() + CHILD_TIMEOUT_S
    while not (metrics.is_file() and metrics.read_text().count("\n") >= steps):
        if process.poll() is not None:
            raise AssertionError(f"rlreason train ended ({process.returncode}) before step {steps}:\n"
                                 f"{process.stderr.read()[-4000:]}")
        assert time.monotonic() < deadline, f"no step {steps} within {CHILD_TIMEOUT_S} s"
        time.sleep(0.005)


def metric_rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[str]:
    """Each row without its timing keys, as JSON text (so NaN equals NaN)."""
    return [json.dumps({key: value for key, value in row.items() if key not in TIMING_KEYS}, sort_keys=True)
            for row in rows]


def saved_steps(checkpoint_dir: Path) -> list[int]:
    """The complete checkpoints of a directory (orbax writes <step> only once a save is complete)."""
    return sorted(int(path.name) for path in checkpoint_dir.iterdir() if path.name.isdigit())


def assert_same_run(out_dir: Path, reference_dir: Path) -> None:
    """Same metrics (all but timing) and samples at every step, and bit-identical final params."""
    rows = metric_rows(out_dir)
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1)), "every step exactly once"
    assert without_timing(rows) == without_timing(metric_rows(reference_dir))
    assert (out_dir / "samples.jsonl").read_text() == (reference_dir / "samples.jsonl").read_text()
    params = load_model(out_dir / "model")[0]
    reference = load_model(reference_dir / "model")[0]
    for leaf, reference_leaf in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(reference_leaf))
