"""`make_scorer` with a mesh, on 8 simulated CPU devices in a fresh process: rows are placed by the rule table's
`batch` entry, every row is scored exactly once, and devices that hold the same rows (tensor replicas) hold the
same scores."""

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


@pytest.mark.parametrize("label,rows_per_call,row_axes", [
    ("16", [2] * 8, ["data", "fsdp"]),  # 4 rows per data x fsdp shard, split between its 2 tensor replicas
    ("4", [1] * 4, ["data", "fsdp"]),  # 1 row per shard: one tensor replica scores it, the other only padding
    ("8 over data", [1] * 8, ["data"]),  # `batch` rule overridden to data: 4 rows per shard, 4 fsdp x tensor replicas
])
def test_every_row_is_scored_once_in_the_rule_tables_layout(report, label, rows_per_call, row_axes):
    case = report[label]
    rows = len(case["direct"])
    assert case["row_axes"] == row_axes
    assert case["rows_per_call"] == rows_per_call
    assert case["times_scored"] == [1] * rows
    assert case["call_numbers"] == list(range(1, rows + 1))  # one call_number call per row, none repeated
    np.testing.assert_array_equal(np.array(case["rewards"]), np.array(case["direct"], dtype=float))


@pytest.mark.parametrize("label", ["16", "4", "8 over data"])
def test_replicas_hold_the_same_scores(report, label):
    assert report[label]["replicas_agree"]


def test_sharded_rewards_are_hand_checked(report):
    # Row kinds repeat every 4 rows: right and formatted; wrong; countdown solved; math equal but unformatted.
    nan = float("nan")
    kinds = np.array([[1.0, 1.0, nan, 1.0], [1.0, 0.0, nan, 0.0], [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, nan, 1.0]])
    np.testing.assert_array_equal(np.array(report["16"]["rewards"]), np.tile(kinds, (4, 1)))
