"""Process supervision: a PRM's step scores as per-token advantages (DeepSeekMath's process-supervised GRPO),
against a float64 reference from the formula, and through `rlreason train` with grpo.process_reward."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny_run import tiny_config

from rlreason.config import ConfigError
from rlreason.models.store import ModelDirError
from rlreason.rl.advantages import STD_EPS, process_advantages
from rlreason.train.loop import train
from rlreason.train.prm import prm
from rlreason.verifiers import reward_function


def reference_process_advantages(rewards: np.ndarray, ends: np.ndarray, group: int) -> np.ndarray:
    """DeepSeekMath 4.1.3 read literally, in float64: normalise a group's step rewards by their mean and std, then
    give each token the sum of the normalised rewards of the steps ending at or after it."""
    rewards, out = rewards.astype(np.float64), np.zeros(rewards.shape)
    for start in range(0, len(rewards), group):
        rows = slice(start, start + group)
        values = rewards[rows][ends[rows]]
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        normalised = np.where(ends[rows], (rewards[rows] - values.mean()) / (std + STD_EPS), 0.0)
        for row, (scores, row_ends) in enumerate(zip(normalised, ends[rows])):
            for t in range(rewards.shape[1]):
                out[start + row, t] = scores[t:][row_ends[t:]].sum()
    return out


def test_a_hand_computed_group():
    # One group of two completions: steps ending at t=1 and t=3 (scores 0.9, 0.3) and at t=2 (score 0.6).
    rewards = np.array([[0.0, 0.9, 0.0, 0.3], [0.0, 0.0, 0.6, 0.0]], np.float32)
    ends = np.array([[False, True, False, True], [False, False, True, False]])
    # mean 0.6, std 0.3: normalised +1, -1 and 0 (up to STD_EPS).
    got = np.asarray(process_advantages(rewards, ends, 2))
    scale = 0.3 / (0.3 + STD_EPS)
    np.testing.assert_allclose(got, [[0.0, 0.0, -scale, -scale], [0.0, 0.0, 0.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_random_groups_match_the_float64_reference(seed):
    rng = np.random.default_rng(seed)
    rewards = rng.uniform(size=(12, 9)).astype(np.float32)
    ends = rng.uniform(size=(12, 9)) < 0.3
    ends[5] = False  # a completion without a step: all zeros
    got = np.asarray(process_advantages(rewards, ends, 4))
    np.testing.assert_allclose(got, reference_process_advantages(rewards, ends, 4), rtol=1e-5, atol=1e-5)
    assert not got[5].any()


@reward_function("constant_half")
def constant_half(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """Every completion alike: the outcome advantage is 0, so only a process reward can move the policy."""
    return 0.5


OUTCOME_ONLY = ["grpo.rewards=[{name: constant_half}]", "grpo.accuracy_reward=constant_half", "train.steps=2",
                "grpo.optim.warmup_steps=0", "checkpoint.every_steps=1"]


@pytest.fixture(scope="module")
def trained_prm(tiny_base_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("prm")
    prm(tiny_config("grpo.rewards=[{name: gsm8k_last_number}]", "grpo.accuracy_reward=gsm8k_last_number",
                    "prm.num_prompts=4", "prm.num_samples=2", "prm.num_rollouts=2", "prm.steps=10",
                    "prm.batch_size=4", "prm.optim.learning_rate=1e-3"), str(tiny_base_model), str(out), show_progress=False)
    return out


def run(model_dir, out_dir, *overrides):
    state, _, history = train(tiny_config(f"train.model_dir={model_dir}", f"train.out_dir={out_dir}",
                                          *OUTCOME_ONLY, *overrides), show_progress=False)
    return state, history


def test_the_prm_moves_a_policy_whose_outcome_rewards_are_all_equal(trained_prm, tiny_base_model, tmp_path):
    _, outcome = run(tiny_base_model, tmp_path / "outcome")
    assert all(row["grad_norm"] == 0 for row in outcome)  # the premise: equal rewards, no gradient
    state, process = run(tiny_base_model, tmp_path / "process", f"grpo.process_reward={trained_prm}")
    assert all(row["grad_norm"] > 0 for row in process)
    assert all(row["process_reward/steps"] > 0 and 0 < row["process_reward/step_score"] < 1 for row in process)
    _, weightless = run(tiny_base_model, tmp_path / "weightless", f"grpo.process_reward={trained_prm}",
                        "grpo.process_reward_weight=0")
    assert all(row["grad_norm"] == 0 for row in weightless)
    saved = ocp.StandardCheckpointer().restore(tmp_path / "process" / "checkpoints" / "2" / "state")
    assert {key for key, value in saved.items() if jax.tree.leaves(value)} == {"step", "params", "opt_state", "rng"}
    assert state.process_reward_model is not None


def test_a_missing_or_foreign_prm_is_refused(tiny_base_model, tmp_path):
    with pytest.raises(ModelDirError, match="prm_head.npz"):
        run(tiny_base_model, tmp_path / "missing", f"grpo.process_reward={tmp_path}")
    with pytest.raises(ConfigError, match=r"grpo\.process_reward_weight"):
        tiny_config("grpo.process_reward_weight=-1")
