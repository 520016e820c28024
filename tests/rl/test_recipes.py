"""Each paper recipe in configs/recipes/ loads with its paper's knobs and trains two steps on the tiny base model.

The recipes' algorithm knobs are kept; the sizes are shrunk to the tests' tiny run (tests/tiny_run.py), the
learning rate starts without warmup (a one-update step at warmup's zero rate would not move), and the rewards
include the format reward, which the tiny base model sometimes earns: with an accuracy reward alone it is
almost always wrong, every advantage is 0 and nothing would train."""

from pathlib import Path

import jax
import numpy as np
import pytest

from tiny_run import TINY_OVERRIDES
from rlreason.config import load_config
from rlreason.train.loop import build_trainer

RECIPES = Path(__file__).parent.parent.parent / "configs" / "recipes"
PAPER_RECIPES = ["deepseekmath_grpo", "r1_zero", "dapo", "dr_grpo", "gspo", "cispo", "dppo"]
# What each paper changes, as the config must read it.
PAPER_KNOBS = {
    "deepseekmath_grpo": {"beta": 0.04, "kl_estimator": "k3", "loss_type": "grpo", "scale_rewards": "group"},
    "r1_zero": {"beta": 0.001, "sync_ref_model": True, "ref_model_sync_steps": 400, "ref_model_mixup_alpha": 1.0},
    "dapo": {"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.0, "dynamic_sampling": "refill",
             "mask_truncated_completions": True},
    "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none", "beta": 0.0},
    "gspo": {"importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4, "num_minibatches": 4},
    "cispo": {"policy_loss": "cispo", "epsilon_high": 5.0, "loss_type": "dapo"},
    "dppo": {"policy_loss": "dppo_tv", "dppo_delta": 0.2},
}
SHRINK = [*(override for override in TINY_OVERRIDES if not override.startswith("grpo.beta")),
          "grpo.optim.warmup_steps=0", "grpo.rewards=[{name: r1_format, weight: 0.2}, {name: exact_answer}]",
          "grpo.accuracy_reward=exact_answer"]


def test_every_paper_has_a_recipe():
    assert sorted(path.stem for path in RECIPES.glob("*.yaml") if not path.stem.startswith("smollm2_")) == sorted(
        PAPER_RECIPES)


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_recipe_trains_two_steps_with_its_papers_knobs(tiny_base_model, recipe):
    cfg = load_config(RECIPES / f"{recipe}.yaml", [*SHRINK, f"train.model_dir={tiny_base_model}"])
    for knob, value in PAPER_KNOBS[recipe].items():
        assert getattr(cfg.grpo, knob) == value, knob
    trainer = build_trainer(cfg)
    state = trainer.state
    before = jax.device_get(state.params)
    for _ in range(2):
        state, metrics, _ = trainer.step_fn(state, trainer.prompt_batch(next(trainer.batches)))
        metrics = jax.device_get(metrics)
        assert int(metrics["nonfinite_updates"]) == 0 and np.isfinite(float(metrics["loss"]))
    assert float(metrics["grad_norm"]) > 0
    moved = [np.abs(np.asarray(new) - old).max() for new, old in zip(jax.tree.leaves(jax.device_get(state.params)),
                                                                     jax.tree.leaves(before))]
    assert max(moved) > 0, "the steps should update the policy"
    assert int(state.step) == 2 and (state.ref_params is None) == (cfg.grpo.beta == 0)
