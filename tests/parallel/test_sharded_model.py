"""The model, the KV cache and the sampler on meshes of 8 CPU devices match the single-device run.

Tolerances: float32 logits, KV caches and sampled log-probs within 1e-5 absolute (the reductions split across
devices sum in another order; measured up to about 7e-6 for logits of magnitude up to 6); tokens, completion
masks and initialized parameters identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rule_layouts import EXPECTED_SPECS, expected_specs

MESHES = ["8x1x1", "1x8x1", "2x2x2", "1x2x4"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, run_python) -> dict[str, np.ndarray]:
    path = tmp_path_factory.mktemp("sharded") / "outputs.npz"
    run_python(["tests/parallel/scripts/sharded_outputs.py", str(path),
                *(mesh.replace("x", ",") for mesh in MESHES)], timeout=900)
    with np.load(path) as stored:
        return dict(stored)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("key", ["logits", "prefill_logits", "cache_keys", "cache_values", "sampled_logprobs"])
def test_float_outputs_match_single_device(outputs, mesh, key):
    np.testing.assert_allclose(outputs[f"{mesh}/{key}"], outputs[f"single/{key}"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("key", ["greedy_tokens", "greedy_mask", "sampled_tokens", "sampled_mask"])
def test_sampled_tokens_are_identical(outputs, mesh, key):
    np.testing.assert_array_equal(outputs[f"{mesh}/{key}"], outputs[f"single/{key}"])


def test_sampling_exercises_stop_tokens(outputs):
    for key in ("greedy_mask", "sampled_mask"):
        lengths = outputs[f"single/{key}"].sum(axis=1)
        assert lengths.min() < lengths.max(), f"{key}: every row ran to the same length; stops untested"


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_init_equals_unsharded_init(outputs, mesh):
    names = [key.removeprefix("single/value/") for key in outputs if key.startswith("single/value/")]
    assert set(names) == set(EXPECTED_SPECS)
    for name in names:
        np.testing.assert_array_equal(outputs[f"{mesh}/value/{name}"], outputs[f"single/value/{name}"], err_msg=name)


@pytest.mark.parametrize("mesh", MESHES)
def test_param_specs_follow_the_rules(outputs, mesh):
    tensor = int(mesh.split("x")[2])
    for name, spec in expected_specs(tensor, num_kv_heads=2).items():
        assert json.loads(str(outputs[f"{mesh}/spec/{name}"])) == spec, name


@pytest.mark.parametrize("mesh, expected", [
    ("8x1x1", {"['embed']": [256, 64], "['layers']['q_proj']": [2, 64, 8, 16]}),
    ("1x8x1", {"['embed']": [256, 8], "['layers']['q_proj']": [2, 8, 8, 16], "['layers']['down_proj']": [2, 128, 8]}),
    ("2x2x2", {"['embed']": [128, 32], "['layers']['q_proj']": [2, 32, 4, 16], "['layers']['k_proj']": [2, 32, 1, 16]}),
    ("1x2x4", {"['embed']": [64, 32], "['layers']['q_proj']": [2, 32, 2, 16], "['layers']['k_proj']": [2, 32, 2, 16],
               "['layers']['attn_norm']": [2, 64]}),
])
def test_local_shards_have_the_split_shapes(outputs, mesh, expected):
    for name, shape in expected.items():
        assert outputs[f"{mesh}/shard_shape/{name}"].tolist() == shape, name


@pytest.mark.parametrize("mesh, spec", [("8x1x1", [None, ["data", "fsdp"], "tensor", None, None]),
                                        ("1x2x4", [None, ["data", "fsdp"], None, None, None])])
def test_cache_is_split_by_rows_and_kv_heads(outputs, mesh, spec):
    assert json.loads(str(outputs[f"{mesh}/cache_spec"])) == spec


def test_fsdp_over_8_devices_holds_an_eighth_of_params_and_adam_state(outputs):
    single = int(outputs["single/param_bytes_per_device"])
    # Leaves with an `embed` dim are split 8 ways; norms and biases stay whole on every device.
    expected = sum(outputs[f"single/value/{name}"].nbytes // (8 if "fsdp" in spec else 1)
                   for name, spec in EXPECTED_SPECS.items())
    fsdp = int(outputs["1x8x1/param_bytes_per_device"])
    assert fsdp == expected
    assert single / 8 <= fsdp <= 1.05 * single / 8
    adam_single, adam_fsdp = int(outputs["single/adam_bytes_per_device"]), int(outputs["1x8x1/adam_bytes_per_device"])
    assert adam_single >= 2 * single
    assert 2 * fsdp <= adam_fsdp <= 2 * fsdp + 16  # two moments like the params, plus a replicated step count


def test_sharded_init_never_holds_a_full_copy(outputs):
    full_copy = int(outputs["single/param_bytes_per_device"])
    assert int(outputs["1x8x1/init_peak_bytes"]) < full_copy / 2

