"""Group-relative advantages against a plain numpy loop over groups."""

import numpy as np
import pytest

from rlreason.rl.advantages import STD_EPS, group_advantages


def reference(rewards: np.ndarray, group_size: int, scale: str) -> np.ndarray:
    out = np.zeros_like(rewards)
    valid_all = rewards[~np.isnan(rewards)]
    batch_std = np.std(valid_all, ddof=1) if len(valid_all) > 1 else 0.0
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        valid = group[~np.isnan(group)]
        mean = valid.mean() if len(valid) else 0.0
        std = np.std(valid, ddof=1) if len(valid) > 1 else 0.0
        for offset, value in enumerate(group):
            if np.isnan(value):
                continue
            centred = value - mean
            if scale == "group":
                centred /= std + STD_EPS
            elif scale == "batch":
                centred /= batch_std + STD_EPS
            out[start + offset] = centred
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_matches_numpy_reference_with_ties_and_unscored(scale):
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 3, 48).astype(np.float32) * 0.5
    rewards[8:16] = 1.0  # a group whose rewards are all equal
    rewards[[3, 20, 21]] = np.nan  # completions no function could score
    rewards[40:48] = np.nan  # a group with nothing scored
    advantages, group_std = group_advantages(rewards, 8, scale)
    np.testing.assert_allclose(advantages, reference(rewards, 8, scale), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(advantages)[8:16] == 0) and np.all(np.asarray(advantages)[[3, 20, 21]] == 0)
    assert float(group_std[1]) == 0 and float(group_std[5]) == 0 and float(group_std[0]) > 0


def test_hand_computed_group():
    advantages, _ = group_advantages(np.array([1.0, 0.0, 0.0, 1.0], np.float32), 4, "group")
    # mean 0.5, Bessel std sqrt(1/3) = 0.57735
    scaled = 0.5 / (0.57735027 + STD_EPS)
    np.testing.assert_allclose(advantages, [scaled, -scaled, -scaled, scaled], rtol=1e-5)
