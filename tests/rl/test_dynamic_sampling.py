"""DAPO dynamic sampling, refill mode, in the real trainer: groups whose rewards are all equal are dropped and
more prompts are drawn until the batch is full.

The task makes most groups all-equal on purpose: a reward registered here gives 1 to every completion of a prompt
without the digit 7, and the completion's length to completions of a prompt with a 7 (so those groups almost
always have a spread).
"""

from __future__ import annotations

import jax
import numpy as np

from tiny_run import tiny_config
from rlreason.train.loop import build_trainer
from rlreason.verifiers.base import reward_function

GROUP = 4


@reward_function("test_spread_only_with_a_seven")
def spread_only_with_a_seven(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    return float(len(completion)) if "7" in prompt else 1.0


def test_refill_fills_the_batch_with_groups_that_have_a_spread(tiny_base_model):
    trainer = build_trainer(tiny_config(
        f"train.model_dir={tiny_base_model}", "grpo.rewards=[{name: test_spread_only_with_a_seven}]",
        "grpo.accuracy_reward=test_spread_only_with_a_seven", "grpo.dynamic_sampling=refill",
        "grpo.max_sampling_draws=24"))
    prompts = trainer.cfg.train.batch_size
    start = trainer.batches.get_state()
    first = next(trainer.batches)
    state, metrics, samples = trainer.step_fn(trainer.state, trainer.prompt_batch(first))
    metrics = {key: float(value) for key, value in jax.device_get(metrics).items()}
    draws = int(metrics["dynamic_sampling/draws"])

    # The prompt stream moved on by exactly the extra draws; replay it to see what was drawn.
    after = trainer.batches.get_state()
    trainer.batches.set_state(start)
    drawn = [next(trainer.batches) for _ in range(draws)]
    assert trainer.batches.get_state() == after
    texts = [trainer.tokenizer.decode(row[mask > 0]) for batch in drawn
             for row, mask in zip(batch["prompt_tokens"], batch["prompt_mask"])]
    without_seven = sum("7" not in text for text in texts)
    assert draws > 1 and without_seven >= prompts, "the task should make most groups all-equal"

    # Full, and no group without a spread in it.
    rewards = np.asarray(samples.rewards)[:, 0].reshape(prompts, GROUP)
    assert rewards.shape == (prompts, GROUP) and metrics["dynamic_sampling/unfilled_groups"] == 0
    assert np.all(rewards.max(1) > rewards.min(1))
    assert metrics["frac_reward_zero_std"] == 0
    # Every prompt without a 7 was dropped; a prompt with a 7 only if its four lengths happened to be equal.
    dropped = metrics["dynamic_sampling/dropped_groups"]
    assert without_seven <= dropped <= draws * prompts - prompts
    assert int(state.step) == 1
