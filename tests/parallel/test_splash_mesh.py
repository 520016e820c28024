"""The splash attention kernel (`model.attention: splash`) on meshes: it cannot be split by the compiler (on TPU
it is a Mosaic custom call), so the model's layout runs it per device under jax.shard_map, each device on its own
rows and KV heads. On meshes of 8 simulated CPU devices (the kernel interpreted) the logits and gradients equal
the one-device einsum path's, and no all-gather moves rows (tests/parallel/scripts/splash_mesh.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hlo_checks import row_gathers

MESHES = ["8x1x1", "1x8x1", "2x2x2"]
UNIT_ROUNDOFF = 2.0**-24
# Float32 sums in other orders: the keys (9), hidden (32) and MLP (48) widths of 2 layers and the vocabulary (64);
# the gradient also sums the loss over 16 rows x 9 positions x 64 logits.
TERMS = 2 * (9 + 32 + 48) + 64
ROW_COUNTS = {16, 8, 4, 2}


@pytest.fixture(scope="module")
def results(run_python, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("splash") / "splash.json"
    run_python(["tests/parallel/scripts/splash_mesh.py", str(out), ",".join(MESHES)], timeout=900)
    return json.loads(out.read_text())


@pytest.mark.parametrize("mesh", MESHES)
def test_splash_on_a_mesh_equals_the_einsum_path(results, mesh):
    expected, got = np.asarray(results["reference_logits"]), np.asarray(results[mesh]["logits"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * TERMS * UNIT_ROUNDOFF * np.abs(expected).max())
    expected, got = np.asarray(results["reference_grads"]), np.asarray(results[mesh]["grads"])
    assert np.linalg.norm(got - expected) <= 2 * (TERMS + 16 * 9 * 64) * UNIT_ROUNDOFF * np.linalg.norm(expected)


@pytest.mark.parametrize("mesh", MESHES)
def test_splash_on_a_mesh_moves_no_rows(results, mesh):
    assert row_gathers(results[mesh]["all_gathers"], ROW_COUNTS) == []
