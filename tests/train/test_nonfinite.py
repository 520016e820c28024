"""The non-finite guard: an update whose loss or gradient norm is NaN/Inf changes neither the params nor the
optimizer state, is counted in `nonfinite_updates`, and too many such steps in a row stop the run, saved.

The NaN comes honestly: a reward function registered here returns inf while `INFINITE_REWARD` is set, which
makes the group advantages, hence the loss and the gradient, NaN.
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
import pytest

from tiny_run import tiny_config
from rlreason.models.store import load_model
from rlreason.train.checkpoint import RunCheckpoints
from rlreason.train.loop import Diverged, build_trainer, train
from rlreason.verifiers.base import reward_function

INFINITE_REWARD = {"on": True}


@reward_function("test_infinite_when_switched_on")
def infinite_when_switched_on(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    return math.inf if INFINITE_REWARD["on"] else float(len(completion) % 3)


@pytest.fixture
def infinite_reward():
    """Switches the reward to inf for the test, and back to finite values after it."""
    INFINITE_REWARD["on"] = True
    yield INFINITE_REWARD
    INFINITE_REWARD["on"] = True


def guarded_config(*overrides):
    # The schedule's warmup would give the first update a zero learning rate; start at the full rate instead.
    return tiny_config("grpo.rewards=[{name: test_infinite_when_switched_on}]",
                       "grpo.accuracy_reward=test_infinite_when_switched_on", "grpo.optim.warmup_steps=0",
                       "grpo.optim.learning_rate=0.01", *overrides)


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]


def test_a_nonfinite_update_leaves_params_and_optimizer_state_unchanged(tiny_base_model, infinite_reward):
    trainer = build_trainer(guarded_config(f"train.model_dir={tiny_base_model}"))
    before = trainer.state
    params, opt_state = leaves(before.params), leaves(before.opt_state)
    state, metrics, _ = trainer.step_fn(before, trainer.prompt_batch(next(trainer.batches)))
    assert not np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite_updates"]) == 1
    for leaf, old in zip(leaves(state.params) + leaves(state.opt_state), params + opt_state, strict=True):
        np.testing.assert_array_equal(leaf, old)
    assert int(state.step) == 1, "the step still counts, and its RNG key is used up"

    infinite_reward["on"] = False  # the next update is finite and trains
    state, metrics, _ = trainer.step_fn(state, trainer.prompt_batch(next(trainer.batches)))
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["nonfinite_updates"]) == 0
    assert any(not np.array_equal(leaf, old) for leaf, old in zip(leaves(state.params), params))


def test_the_run_stops_after_max_nonfinite_steps_with_the_last_good_state_saved(tiny_base_model, tmp_path,
                                                                                 infinite_reward, caplog):
    cfg = guarded_config(f"train.model_dir={tiny_base_model}", f"train.out_dir={tmp_path}", "train.steps=5",
                         "train.max_nonfinite_steps=2", "checkpoint.every_steps=0")
    with caplog.at_level(logging.WARNING, logger="rlreason.train"), pytest.raises(Diverged) as stop:
        train(cfg, show_progress=False)
    checkpoint = tmp_path / "checkpoints" / "2"
    assert stop.value.exit_code == 3
    assert (f"the last 2 steps (to step 2) had a NaN/Inf loss or gradient norm (train.max_nonfinite_steps=2); "
            f"their updates were skipped, so checkpoint {checkpoint} holds the last good params") in str(stop.value)
    assert "step 1: 1 update(s) had a non-finite loss or gradient norm and were skipped" in caplog.text
    rows = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all('"nonfinite_updates": 1.0' in row for row in rows)

    resumed = build_trainer(cfg, abstract_state=True)
    with RunCheckpoints(cfg) as checkpoints:
        assert checkpoints.steps == [2]
        state, _ = checkpoints.restore(resumed.state, resumed.batches)
    base_params = load_model(tiny_base_model)[0]
    for leaf, base in zip(leaves(state.params), leaves(base_params), strict=True):
        np.testing.assert_array_equal(leaf, base)
    assert int(state.opt_state[1][0].count) == 0, "Adam never counted an update"
