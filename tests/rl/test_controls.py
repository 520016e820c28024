"""Reward controls: they keep the reward's mean and break its link to the completions; the step trains on them."""

import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_run import tiny_config
from rlreason.config import ConfigError, GRPOConfig
from rlreason.rl.controls import REWARD_CONTROLS, make_reward_control
from rlreason.train.loop import build_trainer

NAMES = ("r1_format", "exact_answer")
WEIGHTS = jnp.asarray([0.2, 1.0])
DRAWS = 400


def true_rewards(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-function scores [rows, 2] of 0/1 and their weighted sum [rows] (numpy float64 reference)."""
    rng = np.random.default_rng(seed)
    per_function = rng.integers(0, 2, size=(rows, 2)).astype(np.float64)
    return per_function, per_function @ np.asarray(WEIGHTS, np.float64)


def draws(name: str, rewards: np.ndarray, per_function: np.ndarray) -> np.ndarray:
    """The control's rewards [DRAWS, rows] under DRAWS different keys."""
    control = jax.jit(jax.vmap(make_reward_control(name, NAMES, WEIGHTS), in_axes=(None, None, 0)))
    keys = jax.random.split(jax.random.key(0), DRAWS)
    return np.asarray(control(jnp.asarray(rewards, jnp.float32), jnp.asarray(per_function, jnp.float32), keys))


def test_the_config_offers_exactly_the_registered_controls():
    assert set(typing.get_args(typing.get_type_hints(GRPOConfig)["reward_control"])) == set(REWARD_CONTROLS)


def test_shuffle_permutes_the_scored_rows_and_leaves_nan_rows_alone():
    per_function, rewards = true_rewards(64)
    rewards[[3, 40]] = np.nan
    shuffled = draws("shuffle", rewards, per_function)
    scored = ~np.isnan(rewards)
    assert np.isnan(shuffled[:, ~scored]).all() and not np.isnan(shuffled[:, scored]).any()
    for row in shuffled:  # every draw: the same multiset of values, hence exactly the same mean
        np.testing.assert_allclose(np.sort(row[scored]), np.sort(rewards[scored]), rtol=1e-6)
    assert (shuffled[:, scored] != rewards[scored]).any(axis=1).all()


@pytest.mark.parametrize("name", ["shuffle", "bernoulli"])
def test_random_controls_keep_the_mean_and_break_the_link_to_the_completion(name):
    per_function, rewards = true_rewards(64)
    controlled = draws(name, rewards, per_function)
    mean, low, high = rewards.mean(), rewards.min(), rewards.max()
    # Bernoulli: each row is low or high with p = (mean - low) / (high - low); the mean over all draws is within
    # 5 binomial standard deviations of the true mean.
    p_high = (mean - low) / (high - low)
    tolerance = 5 * (high - low) * np.sqrt(p_high * (1 - p_high) / controlled.size)
    assert abs(controlled.mean() - mean) < tolerance
    if name == "bernoulli":
        assert set(np.unique(controlled)) <= {np.float32(low), np.float32(high)}
    # No link: a row's expected control reward is the batch mean whatever its own reward was.
    for value in np.unique(rewards):
        rows = rewards == value
        assert abs(controlled[:, rows].mean() - mean) < 5 * rewards.std() / np.sqrt(DRAWS * rows.sum()) + 1e-6, value
    # The true reward is no predictor: correlation across rows, per draw, averages to about 0.
    correlations = [np.corrcoef(row, rewards)[0, 1] for row in controlled]
    assert abs(np.mean(correlations)) < 5 / np.sqrt(64 * DRAWS)


def test_bernoulli_of_a_constant_batch_is_the_constant():
    rewards = np.full(8, 0.2)
    per_function = np.tile([1.0, 0.0], (8, 1))
    np.testing.assert_allclose(draws("bernoulli", rewards, per_function), 0.2, rtol=1e-6)


def test_format_only_pays_the_weighted_format_reward_alone():
    per_function, rewards = true_rewards(16)
    per_function[5, 1] = np.nan  # the answer cannot be scored: the format reward still applies
    controlled = draws("format_only", rewards, per_function)
    np.testing.assert_allclose(controlled, np.broadcast_to(0.2 * per_function[:, 0], controlled.shape), rtol=1e-6)


def test_format_only_needs_a_format_reward():
    with pytest.raises(ConfigError, match="'grpo.reward_control' is 'format_only'.*no format reward"):
        make_reward_control("format_only", ("exact_answer",), jnp.asarray([1.0]))


def first_step(model_dir, *overrides):
    # No warm-up: the first update has a learning rate above 0.
    trainer = build_trainer(tiny_config(f"train.model_dir={model_dir}", "grpo.optim.warmup_steps=0", *overrides))
    state, metrics, _ = trainer.step_fn(trainer.state, trainer.prompt_batch(next(trainer.batches)))
    return jax.device_get(state.params), {key: float(value) for key, value in jax.device_get(metrics).items()}


def test_a_step_trains_on_the_shuffled_reward_and_measures_the_true_accuracy(tiny_base_model):
    params_true, true = first_step(tiny_base_model)
    params_shuffled, shuffled = first_step(tiny_base_model, "grpo.reward_control=shuffle")
    assert true["reward_std"] > 0, "the tiny base model should produce groups with different rewards"
    # The same rollout: the same true scores and accuracies; the shuffled reward has the same mean.
    for key in ("rewards/r1_format", "rewards/exact_answer", "accuracy", "accuracy_strict", "accuracy_lenient",
                "format_rate", "completion_length"):
        assert shuffled[key] == true[key], key
    np.testing.assert_allclose(shuffled["reward"], true["reward"], rtol=1e-6)
    assert true["accuracy_lenient"] >= true["accuracy"] >= true["accuracy_strict"]
    # ... but other advantages, so another update.
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(params_true), jax.tree.leaves(params_shuffled))]
    assert max(moved) > 1e-6
