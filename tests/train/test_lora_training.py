"""GRPO with LoRA / QLoRA through `rlreason train`: only the adapters train and are saved, the reference is the base
with the adapters off, the final model is the merged policy, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny_run import tiny_config

from rlreason.models.lora import adapter_specs, merge_adapters, quantize_base
from rlreason.models.quantize import QuantizedWeight
from rlreason.models.store import load_model
from rlreason.parallel.rules import axis_rules
from rlreason.train.commands import evaluated_model
from rlreason.train.loop import train

STEPS = 3


def lora_config(model_dir, out_dir, *overrides):
    return tiny_config(f"train.model_dir={model_dir}", f"train.out_dir={out_dir}", f"train.steps={STEPS}",
                       "lora.rank=4", "lora.alpha=8", "grpo.beta=0.04", "grpo.optim.learning_rate=3e-3",
                       "checkpoint.every_steps=1", "checkpoint.keep_last=5", *overrides)


@pytest.fixture(scope="module", params=["none", "nf4"])
def lora_run(request, tiny_base_model, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp(f"lora_{request.param}")
    cfg = lora_config(tiny_base_model, out_dir, f"lora.base_quantization={request.param}")
    state, trainer, history = train(cfg, show_progress=False)
    return cfg, out_dir, state, trainer, history


def shapes(tree):
    return jax.tree.map(lambda leaf: leaf.shape, tree, is_leaf=lambda node: hasattr(node, "axes"))


def test_the_optimizer_holds_the_adapters_only(lora_run):
    cfg, _, state, trainer, _ = lora_run
    adapters = shapes(adapter_specs(trainer.model_cfg, cfg.lora))
    assert shapes(state.params) == adapters
    adam = state.opt_state[1][0]
    assert shapes(adam.mu) == adapters and shapes(adam.nu) == adapters
    assert state.ref_params is None


def test_the_base_stays_as_loaded_and_the_adapters_move(lora_run, tiny_base_model):
    cfg, _, state, _, _ = lora_run
    expected = quantize_base(load_model(tiny_base_model)[0], cfg.lora)
    for leaf, loaded in zip(jax.tree.leaves(state.base), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(loaded))
    quantized = cfg.lora.base_quantization != "none"
    assert isinstance(state.base["layers"]["q_proj"], QuantizedWeight) == quantized
    assert all(np.any(np.asarray(pair["b"]) != 0) for pair in state.params["layers"].values())


def test_the_reference_is_the_base_with_the_adapters_off(lora_run):
    history = lora_run[4]
    # Step 1 samples and learns with b = 0: the policy is its reference, so the KL estimate is exactly 0.
    assert history[0]["kl"] == 0.0
    assert history[-1]["kl"] > 0.0


def test_checkpoints_hold_the_adapters_and_no_base(lora_run):
    cfg, out_dir, _, trainer, _ = lora_run
    saved = ocp.StandardCheckpointer().restore(out_dir / "checkpoints" / str(STEPS) / "state")
    assert {key for key, value in saved.items() if jax.tree.leaves(value)} == {"step", "params", "opt_state", "rng"}
    assert shapes(saved["params"]) == shapes(adapter_specs(trainer.model_cfg, cfg.lora))


def test_the_final_model_is_the_merged_policy(lora_run):
    _, out_dir, state, trainer, _ = lora_run
    merged = merge_adapters(trainer.functions.policy(state), np.float32)
    stored = load_model(out_dir / "model")[0]
    # Merged by a compiled function there, eagerly here: equal to float32 rounding.
    for leaf, expected in zip(jax.tree.leaves(stored), jax.tree.leaves(merged), strict=True):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(expected), rtol=1e-6, atol=1e-7)


def test_rlreason_eval_reads_a_lora_checkpoint_as_the_merged_policy(lora_run):
    cfg, out_dir, state, trainer, _ = lora_run
    params, _, _, step = evaluated_model(cfg, str(out_dir / "checkpoints" / str(STEPS)), trainer.mesh,
                                         axis_rules(cfg.mesh))
    assert step == STEPS
    stored = load_model(out_dir / "model")[0]
    for leaf, expected in zip(jax.tree.leaves(params), jax.tree.leaves(stored), strict=True):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(expected), rtol=1e-6, atol=1e-7)


def test_a_resumed_lora_run_equals_the_uninterrupted_one(lora_run, tiny_base_model, tmp_path):
    cfg, out_dir, state, _, history = lora_run
    quantization = f"lora.base_quantization={cfg.lora.base_quantization}"
    train(lora_config(tiny_base_model, tmp_path, quantization, "train.steps=2"), show_progress=False)
    resumed, _, resumed_history = train(lora_config(tiny_base_model, tmp_path, quantization), show_progress=False)
    timing = ("step_time_s", "tokens_per_s", "mfu")
    drop = lambda rows: [{k: v for k, v in row.items() if k not in timing} for row in rows]  # noqa: E731
    assert drop(resumed_history) == drop(history)
    for leaf, expected in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(expected))
