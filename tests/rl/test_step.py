"""The compiled GRPO step: fused vs split, determinism, accumulation equivalence, on-policy loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_run import tiny_config
from rlreason.train.loop import build_trainer


@functools.cache
def trainer_for(model_dir: str, overrides: tuple[str, ...]):
    """One compiled trainer per configuration (programs with host callbacks miss the persistent compile
    cache), with its untouched initial state and data position so that every run starts alike."""
    trainer = build_trainer(tiny_config(f"train.model_dir={model_dir}", *overrides))
    return trainer, jax.tree.map(jnp.copy, trainer.state), trainer.batches.get_state()


def run_steps(model_dir, steps=2, *overrides):
    trainer, initial_state, data_start = trainer_for(str(model_dir), overrides)
    trainer.batches.set_state(data_start)
    state, history = jax.tree.map(jnp.copy, initial_state), []  # the step donates its input state
    for _ in range(steps):
        state, metrics, _ = trainer.step_fn(state, trainer.prompt_batch(next(trainer.batches)))
        history.append({key: float(value) for key, value in jax.device_get(metrics).items()})
    return jax.device_get(state.params), history


def assert_same_trees(first, second, **tolerance):
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_allclose(a, b, **tolerance) if tolerance else np.testing.assert_array_equal(a, b)


def test_step_is_deterministic_for_a_fixed_seed(tiny_base_model):
    params_a, history_a = run_steps(tiny_base_model)
    params_b, history_b = run_steps(tiny_base_model)
    assert history_a == history_b
    assert_same_trees(params_a, params_b)
    _, other_seed = run_steps(tiny_base_model, 2, "train.seed=1")
    assert other_seed != history_a


def test_split_step_agrees_with_the_fused_step(tiny_base_model):
    params_fused, fused = run_steps(tiny_base_model)
    params_split, split = run_steps(tiny_base_model, 2, "train.split_step=true")
    for fused_metrics, split_metrics in zip(fused, split):
        assert fused_metrics.keys() == split_metrics.keys()
        for key in fused_metrics:
            np.testing.assert_allclose(split_metrics[key], fused_metrics[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert_same_trees(params_fused, params_split, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_gradient_accumulation_gives_the_single_batch_update(tiny_base_model, loss_type):
    loss = () if loss_type == "grpo" else (f"grpo.loss_type={loss_type}",)  # grpo: reuse the default trainer
    params_one, one = run_steps(tiny_base_model, 1, *loss)
    params_four, four = run_steps(tiny_base_model, 1, *loss, "grpo.gradient_accumulation_steps=4")
    np.testing.assert_allclose(four[0]["grad_norm"], one[0]["grad_norm"], rtol=1e-5)
    assert_same_trees(params_one, params_four, rtol=1e-5, atol=1e-7)


def test_on_policy_step_reports_zero_loss_with_a_nonzero_gradient(tiny_base_model):
    _, history = run_steps(tiny_base_model, 1)  # num_iterations 1, beta 0 (the tiny config's)
    metrics = history[0]
    assert metrics["reward_std"] > 0, "the tiny base model should produce groups with different rewards"
    assert abs(metrics["loss"]) < 1e-5
    assert metrics["grad_norm"] > 1e-4
    assert abs(metrics["ratio_mean"] - 1.0) < 1e-4


def test_several_updates_per_batch_move_off_policy_and_track_kl(tiny_base_model):
    _, history = run_steps(tiny_base_model, 1, "grpo.num_iterations=2", "grpo.num_minibatches=2", "grpo.beta=0.04",
                           "grpo.optim.learning_rate=0.01")
    metrics = history[0]
    assert metrics["kl"] > 0  # later updates see a policy that moved away from the reference
    assert metrics["ratio_max"] > 1.0 + 1e-4 or metrics["ratio_min"] < 1.0 - 1e-4
    for key in ("clip_ratio_low", "clip_ratio_high", "entropy", "learning_rate", "frac_reward_zero_std",
                "rewards/r1_format", "rewards/exact_answer", "accuracy", "accuracy_strict", "accuracy_lenient",
                "format_rate", "completion_length", "clipped_ratio"):
        assert np.isfinite(metrics[key]), key


@pytest.mark.parametrize("loss_type", ["bnpo", "dr_grpo"])  # grpo and dapo run in the tests above
def test_every_loss_type_trains(tiny_base_model, loss_type):
    _, history = run_steps(tiny_base_model, 1, f"grpo.loss_type={loss_type}", "grpo.scale_rewards=none",
                           "grpo.mask_truncated_completions=true")
    assert np.isfinite(history[0]["grad_norm"])
