"""`make_scorer` with a mesh, on 8 simulated CPU devices in a fresh process: each device scores its own rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("sharded_scoring_script.py")


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_rows_split_over_every_axis_are_scored_once_each(report):
    case = report["16"]
    assert case["rows_per_call"] == [2] * 8
    assert case["times_scored"] == [1] * 16
    assert case["row_axes"] == ["data", "fsdp", "tensor"]
    np.testing.assert_array_equal(np.array(case["rewards"]), np.array(case["direct"], dtype=float))


def test_when_tensor_does_not_divide_the_rows_replicas_score_them_again(report):
    case = report["4"]
    assert case["rows_per_call"] == [1] * 8
    assert case["times_scored"] == [2] * 4
    assert case["row_axes"] == ["data", "fsdp"]
    np.testing.assert_array_equal(np.array(case["rewards"]), np.array(case["direct"], dtype=float))


def test_sharded_rewards_are_hand_checked(report):
    # Row kinds repeat every 4 rows: right and formatted; wrong; countdown solved; math equal but unformatted.
    nan = float("nan")
    kinds = np.array([[1.0, 1.0, nan, 1.0], [1.0, 0.0, nan, 0.0], [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, nan, 1.0]])
    np.testing.assert_array_equal(np.array(report["16"]["rewards"]), np.tile(kinds, (4, 1)))
