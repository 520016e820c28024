"""Advantages against a float64 numpy loop over groups written from shared ALGORITHMS.md, exact zeros for groups
whose rewards are all equal, and GDPO-style per-function normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.rl.advantages import STD_EPS, compute_advantages, group_advantages
from rlreason.verifiers.combine import combine_rewards

G = 8


def reference(rewards: np.ndarray, group_size: int, estimator: str, scale: str) -> np.ndarray:
    """One group at a time: mean, leave-one-out mean and Bessel std over the scored members (NaN = unscored)."""
    rewards = rewards.astype(np.float64)
    out = np.zeros_like(rewards)
    scored_all = rewards[~np.isnan(rewards)]
    batch_std = np.std(scored_all, ddof=1) if len(scored_all) > 1 else 0.0
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        scored = [i for i in range(group_size) if not np.isnan(group[i])]
        values = group[scored]
        std = np.std(values, ddof=1) if len(values) > 1 else 0.0
        for i in scored:
            if estimator == "grpo":
                centred = group[i] - values.mean()
            else:  # rloo: the mean of the other scored members
                others = [group[j] for j in scored if j != i]
                centred = group[i] - np.mean(others) if others else 0.0
            divisor = {"group": std + STD_EPS, "batch": batch_std + STD_EPS, "none": 1.0}[scale]
            out[start + i] = centred / divisor
    return out


def rewards_with_ties(seed):
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 3, 6 * G).astype(np.float32) * 0.5
    rewards[G:2 * G] = 0.2  # all equal, and 0.2 has no exact float32 mean by plain summation
    rewards[[3, 20, 21]] = np.nan  # completions no function could score
    rewards[4 * G:5 * G] = np.nan  # a group with nothing scored
    rewards[5 * G:6 * G] = np.nan
    rewards[5 * G + 2] = 0.7  # a group with one scored member: no spread
    return rewards


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_matches_the_numpy_reference(estimator, scale):
    rewards = rewards_with_ties(0)
    expected = reference(rewards, G, estimator, scale)
    with jax.enable_x64(True):
        exact = group_advantages(jnp.asarray(rewards, jnp.float64), G, estimator, scale)
    np.testing.assert_allclose(exact, expected, rtol=1e-12, atol=1e-12)
    # float32: rewards in [0, 1] divided by std + 1e-4 >= 1e-4: relative rounding of ~1e-7 per operation.
    np.testing.assert_allclose(group_advantages(jnp.asarray(rewards), G, estimator, scale), expected, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_give_exact_zeros_in_float32(estimator, scale):
    rewards = rewards_with_ties(1)
    advantages = np.asarray(group_advantages(jnp.asarray(rewards), G, estimator, scale))
    assert np.all(advantages[G:2 * G] == 0.0), "an all-equal group must get exactly 0"
    assert np.all(advantages[4 * G:] == 0.0), "unscored rows and a lone scored row must get exactly 0"
    assert np.all(advantages[[3, 20, 21]] == 0.0)
    result = compute_advantages(jnp.asarray(rewards), jnp.asarray(rewards)[:, None], jnp.ones(1), G, estimator,
                                scale, per_function=False)
    assert float(result.group_std[1]) == 0.0
    assert np.asarray(result.zero_std).tolist() == [False, True, False, False, True, True]


def test_all_equal_batch_gives_zero_batch_std():
    rewards = jnp.full(2 * G, 0.2, jnp.float32)
    assert np.all(np.asarray(group_advantages(rewards, G, "grpo", "batch")) == 0.0)


def test_rloo_of_a_hand_computed_group():
    # r = [1, 0, 0, 1]: the other three average 1/3 for a 1 and 2/3 for a 0.
    advantages = group_advantages(jnp.asarray([1.0, 0.0, 0.0, 1.0]), 4, "rloo", "none")
    np.testing.assert_allclose(advantages, [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)


def test_hand_computed_group():
    advantages = group_advantages(jnp.asarray([1.0, 0.0, 0.0, 1.0]), 4, "grpo", "group")
    scaled = 0.5 / (np.sqrt(1 / 3) + STD_EPS)  # mean 0.5, Bessel std sqrt(1/3)
    np.testing.assert_allclose(advantages, [scaled, -scaled, -scaled, scaled], rtol=1e-5)


def test_per_function_normalisation_weighs_each_function_on_its_own():
    """GDPO: a dense format reward (0.9-1.0) and a sparse accuracy reward (0/1): the weighted sum of the functions'
    group-normalised advantages, a function that does not apply to a row adding nothing there."""
    rng = np.random.default_rng(3)
    per_function = np.stack([rng.uniform(0.9, 1.0, 4 * G), rng.integers(0, 2, 4 * G).astype(np.float64)], 1)
    per_function[5, 1] = np.nan  # accuracy not applicable to this row
    per_function[9] = np.nan  # no function applies
    weights = np.asarray([0.2, 1.0])
    expected = sum(weights[k] * reference(per_function[:, k], G, "grpo", "group") for k in range(2))
    expected[9] = 0.0
    with jax.enable_x64(True):
        rewards = combine_rewards(jnp.asarray(per_function), jnp.asarray(weights))
        result = compute_advantages(rewards, jnp.asarray(per_function), jnp.asarray(weights), G, "grpo", "group",
                                    per_function=True)
    np.testing.assert_allclose(result.advantages, expected, rtol=1e-12, atol=1e-12)
    summed = reference(np.where(np.isnan(per_function), 0, per_function) @ weights, G, "grpo", "group")
    assert np.abs(expected - summed).max() > 0.1, "the per-function normalisation should differ from the sum's"
