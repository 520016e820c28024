"""A run from a model directory computes with its own config's run-time settings (compute dtype, master-weight
dtype, remat and its policy, layer scan) on top of the architecture the directory stores; architecture keys
that contradict the stored model are refused. Checked on the compiled program, not on the config object."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.config import MODEL_RUN_SETTINGS, ConfigError, ModelConfig, load_config
from rlreason.models.store import load_model, run_model_config
from rlreason.models.transformer import ACTIVATIONS
from rlreason.train.loop import build_trainer
from tiny_run import tiny_config

ACCELERATOR_CONFIGS = ["configs/gpu_1.yaml", "configs/tpu_v5e_8.yaml", "configs/tpu_v5p_64.yaml"]
ROOT = Path(__file__).resolve().parents[2]


def dot_operand_types(hlo_text: str) -> list[str]:
    """The element types of every dot_general's operands in a StableHLO module's text, e.g. ['bf16', 'f32']."""
    return re.findall(r"stablehlo\.dot_general[^\n]*?:\s*\(tensor<(?:[\d?]+x)*(\w+)>", hlo_text)


def lowered_step(cfg) -> tuple[str, object]:
    """(StableHLO text of the run's compiled GRPO step, the trainer), with nothing initialised or read."""
    trainer = build_trainer(cfg, abstract_state=True)
    batch = trainer.prompt_batch(next(trainer.batches))
    return trainer.step_fn.lower(trainer.state, batch).as_text(), trainer


@pytest.mark.parametrize("path", ACCELERATOR_CONFIGS)
def test_accelerator_configs_run_bfloat16_with_remat_on_a_converted_model(path):
    """What `rlreason convert` stores (the checkpoint's dtype, remat off) gives way to the config's settings."""
    run = load_config(ROOT / path).model
    converted = dataclasses.replace(run, dtype="float32", param_dtype="bfloat16", remat=False)
    model = run_model_config(converted, run, "models/converted")
    assert (model.dtype, model.param_dtype, model.remat) == ("bfloat16", "float32", True)


def test_an_architecture_key_that_contradicts_the_model_directory_is_refused():
    stored = ModelConfig(hidden_size=64, num_layers=3)
    with pytest.raises(ConfigError, match=r"'model.hidden_size' is 256, but the model in 'models/m' has 64"):
        run_model_config(stored, ModelConfig(hidden_size=256), "models/m")
    # Keys left at their defaults, or equal to the stored values, are no contradiction.
    assert run_model_config(stored, ModelConfig(num_layers=3, remat=True), "models/m") == dataclasses.replace(
        stored, remat=True)
    assert set(MODEL_RUN_SETTINGS) <= {field.name for field in dataclasses.fields(ModelConfig)}


def test_bfloat16_compute_over_float32_master_weights_in_the_compiled_step(tiny_base_model):
    settings = [f"train.model_dir={tiny_base_model}", "grpo.beta=0.04"]
    float32_text, _ = lowered_step(tiny_config(*settings))
    bfloat16_text, trainer = lowered_step(tiny_config(*settings, "model.dtype=bfloat16", "model.remat=true"))

    assert set(dot_operand_types(float32_text)) == {"f32"}
    types = dot_operand_types(bfloat16_text)
    # Every transformer matmul in sampling, the reference pass and the update (forward and backward) is bf16;
    # the few float32 dots left are outside the layers (none are expected to be the majority).
    assert types.count("bf16") > 0.9 * len(types), types
    # Master weights, Adam's moments and the reference stay float32.
    for tree in (trainer.state.params, trainer.state.opt_state, trainer.state.ref_params):
        floats = [leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]
        assert floats and set(floats) == {jnp.dtype("float32")}
    # remat: jax.checkpoint keeps recomputed layer activations apart with optimization barriers; without it the
    # step has one, which holds its metrics until after the update (rlreason.rl.step).
    assert float32_text.count("optimization_barrier") == 1
    assert bfloat16_text.count("optimization_barrier") > 1


def test_params_load_in_the_runs_master_weight_dtype(tiny_base_model):
    stored, _, _ = load_model(tiny_base_model)
    halved, model_cfg, _ = load_model(tiny_base_model, run=dataclasses.replace(
        tiny_config().model, param_dtype="bfloat16"))
    assert model_cfg.param_dtype == "bfloat16"
    for full, half in zip(jax.tree.leaves(stored), jax.tree.leaves(halved)):
        assert half.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(half), np.asarray(full.astype(jnp.bfloat16)))


def test_exact_and_tanh_gelu_follow_their_formulas():
    """gelu is x * Phi(x) with the normal CDF (erf); gelu_tanh the tanh approximation, which differs from it."""
    from math import erf, sqrt, tanh, pi

    values = np.linspace(-4, 4, 33)
    exact = np.array([v * 0.5 * (1 + erf(v / sqrt(2))) for v in values])
    approximate = np.array([0.5 * v * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 * v**3))) for v in values])
    np.testing.assert_allclose(ACTIVATIONS["gelu"](jnp.asarray(values, jnp.float32)), exact, atol=1e-6)
    np.testing.assert_allclose(ACTIVATIONS["gelu_tanh"](jnp.asarray(values, jnp.float32)), approximate, atol=1e-6)
    assert np.max(np.abs(exact - approximate)) > 1e-4
