"""GRPO with configs/gsm8k_smollm2.yaml: the training loop on the real SmolLM2-135M-Instruct and its tokenizer.

The default run takes one step with tiny sampling lengths (short GSM8K questions, 8 new tokens); the slow run
takes three steps at the config's own sizes. The config's reward, the last number of the reply, is 0 on nearly
every sample of this model, and rewards that are equal within every group leave the policy as it was; so the
runs add `completion_chars`, the reply's length, which varies from reply to reply, to make the update certain.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from rlreason.config import RewardConfig, load_config
from rlreason.models.store import load_model
from rlreason.train.loop import train
from rlreason.verifiers import reward_function

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "configs" / "gsm8k_smollm2.yaml"
GSM8K_TRAIN = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"

pytestmark = pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason=f"the shared GSM8K file {GSM8K_TRAIN} is "
                                "missing (CI clones the repository with ../shared beside it)")


@reward_function("completion_chars")
def completion_chars(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """The reply's length in characters, as a small reward."""
    return len(completion) / 1000


def run_grpo(model_dir: Path, out_dir: Path, overrides: list[str], monkeypatch):
    """`train` on the config from the repository root (its data paths are relative to it), with
    `completion_chars` added to its rewards. Returns (final state, per-step metrics, samples.jsonl rows)."""
    monkeypatch.chdir(ROOT)
    cfg = load_config(CONFIG, [f"train.model_dir={model_dir}", f"train.out_dir={out_dir}", "train.sample_every=1",
                               *overrides])
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(
        cfg.grpo, rewards=cfg.grpo.rewards + (RewardConfig("completion_chars", weight=0.01),)))
    state, _, history = train(cfg, show_progress=False)
    samples = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
    return state, history, samples


def check_run(model_dir: Path, state, history: list[dict], samples: list[dict]) -> None:
    """Finite metrics, real replies to chat-templated questions, and every parameter leaf moved, by at most the
    learning rate per update (AdamW's step bound) plus float32 rounding."""
    for metrics in history:
        assert all(math.isfinite(value) for value in metrics.values()), metrics
        assert metrics["completion_length"] > 0
        assert metrics["frac_reward_zero_std"] < 1, "every group scored its samples alike: no update"
    for row in samples:
        assert "You are a helpful AI assistant named SmolLM" in row["prompt"], row
        assert row["length"] > 0 and re.search("[A-Za-z]{2,}", row["completion"]), row
    initial, _, _ = load_model(model_dir)
    adamw_bound = sum(metrics["learning_rate"] for metrics in history)
    for (path, before), after in zip(jax.tree_util.tree_leaves_with_path(initial), jax.tree.leaves(state.params)):
        change = np.max(np.abs(np.asarray(after) - np.asarray(before)))
        # The margin is float32 rounding, up to 4.8e-7 an update for this model's largest parameters (9.25).
        assert 0 < change <= 2 * adamw_bound, (jax.tree_util.keystr(path), change)


def test_one_step_on_short_questions(smollm2_converted, tmp_path, monkeypatch):
    # Temperature 1 so that the two replies of a group differ (at 0.7 they often start alike).
    state, history, samples = run_grpo(
        smollm2_converted.directory, tmp_path,
        ["train.steps=1", "grpo.num_generations=2", "sampling.max_prompt_length=64", "sampling.max_completion_length=8",
         "sampling.temperature=1.0", "task.num_train=64", "task.on_bad_row=skip"], monkeypatch)
    assert len(history) == 1 and len(samples) == 4
    check_run(smollm2_converted.directory, state, history, samples)


@pytest.mark.slow
def test_three_steps_at_the_configs_sizes(smollm2_converted, tmp_path, monkeypatch):
    state, history, samples = run_grpo(smollm2_converted.directory, tmp_path, ["train.steps=3"], monkeypatch)
    assert [metrics["step"] for metrics in history] == [1, 2, 3]
    check_run(smollm2_converted.directory, state, history, samples)
