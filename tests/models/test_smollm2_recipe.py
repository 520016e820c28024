"""configs/recipes/smollm2_addition.yaml: GRPO on the real SmolLM2-135M-Instruct and its tokenizer.

By default one step at tiny sampling lengths, checked for what an update must do; with `-m slow` the recipe end
to end as `rlreason demo` runs it (base evaluation, GRPO, the shuffled-reward control, their evaluations), fewer
steps and problems than the recipe's, asserting that held-out lenient accuracy rises and the control's does not.
The one-step run adds `completion_chars`, the reply's length, to the rewards: two groups of four short replies can
tie on the recipe's rewards, and tied groups leave the policy as it was.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from rlreason.config import RewardConfig, load_config
from rlreason.models.store import load_model
from rlreason.train.demo import run_demo
from rlreason.train.loop import SAMPLES_PER_LOG, train
from rlreason.verifiers import reward_function

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "configs" / "recipes" / "smollm2_addition.yaml"


@reward_function("completion_chars")
def completion_chars(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """The reply's length in characters, as a small reward."""
    return len(completion) / 1000


def run_grpo(model_dir: Path, out_dir: Path, overrides: list[str]):
    """`train` on the recipe with `completion_chars` added to its rewards. Returns (final state, per-step
    metrics, samples.jsonl rows)."""
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
        assert "\nuser\nWhat is " in row["prompt"] and row["prompt"].endswith(
            "? Answer with just the number.\nassistant\n"), row  # decoded without the special tokens
        assert row["length"] > 0 and row["completion"].strip(), row
    initial, _, _ = load_model(model_dir)
    adamw_bound = sum(metrics["learning_rate"] for metrics in history)
    for (path, before), after in zip(jax.tree_util.tree_leaves_with_path(initial), jax.tree.leaves(state.params)):
        change = np.max(np.abs(np.asarray(after) - np.asarray(before)))
        # The margin is float32 rounding, up to 4.8e-7 an update for this model's largest parameters (9.25).
        assert 0 < change <= 2 * adamw_bound, (jax.tree_util.keystr(path), change)


def test_one_step(smollm2_converted, tmp_path):
    state, history, samples = run_grpo(
        smollm2_converted.directory, tmp_path,
        ["train.steps=1", "train.batch_size=2", "grpo.num_generations=4", "sampling.max_completion_length=8"])
    assert len(history) == 1 and len(samples) == SAMPLES_PER_LOG
    check_run(smollm2_converted.directory, state, history, samples)


# The documented QLoRA run of the recipe (docs/lora.md).
QLORA = ["lora.rank=16", "lora.alpha=32", "lora.base_quantization=nf4", "grpo.optim.learning_rate=2e-4"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", [[], QLORA], ids=["full", "qlora"])
def test_the_recipe_raises_held_out_lenient_accuracy_and_its_shuffled_control_does_not(smollm2_converted, tmp_path,
                                                                                        variant):
    """12 steps of the recipe (docs/real-models.md and docs/lora.md measure its full 20), 32 held-out problems x 4
    samples, by full fine-tuning and by QLoRA."""
    cfg = load_config(CONFIG, [f"train.model_dir={smollm2_converted.directory}", "train.steps=12",
                               "task.num_eval=32", *variant])
    summary = run_demo(cfg, tmp_path, show_progress=False)
    assert summary["rl_gain_lenient_points"] >= 20, summary
    assert summary["control_pass@1_lenient"] < summary["base_pass@1_lenient"] + 0.5 * (
        summary["rl_pass@1_lenient"] - summary["base_pass@1_lenient"]), summary
    assert summary["rl_pass@1_lenient"] >= summary["rl_pass@1_strict"]
