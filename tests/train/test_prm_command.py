"""`rlreason prm`: Math-Shepherd labels of the policy's own samples, a PRM trained on them that fits the held-out
labels better than its untrained start, saved and read back, and used as a step-level search scorer."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import TINY_OVERRIDES, tiny_config
from train_runs import REPO, child_env

from rlreason.config import ConfigError
from rlreason.sampling.sampler import SamplingParams
from rlreason.search.beam import step_beam_search
from rlreason.search.prm import step_logits
from rlreason.search.steps import delimiter_table
from rlreason.train.prm import load_prm, prm, prm_scorer
from rlreason.verifiers.base import get_reward_fn

ROLLOUTS = 4
# The tiny model rarely closes the <answer> tag, so exact_answer would label every step 0: the last number of the
# completion labels its steps instead.
SETTINGS = ["grpo.rewards=[{name: gsm8k_last_number}]", "grpo.accuracy_reward=gsm8k_last_number",
            "prm.num_prompts=12", "prm.num_samples=4", f"prm.num_rollouts={ROLLOUTS}", "prm.max_steps=4",
            "prm.steps=40", "prm.batch_size=8", "prm.learning_rate=1e-3"]


@pytest.fixture(scope="module")
def prm_run(tiny_base_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("prm")
    cfg = tiny_config(*SETTINGS)
    summary = prm(cfg, str(tiny_base_model), str(out), show_progress=False)
    records = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    return cfg, out, summary, records


def test_every_completion_is_labelled_step_by_step(prm_run):
    cfg, _, summary, records = prm_run
    assert len(records) == summary["completions"] == 12 * 4
    verdict = get_reward_fn("gsm8k_last_number")
    labelled = 0
    for record in records:
        steps, soft, hard = record["steps"], record["soft"], record["hard"]
        assert "".join(steps) == record["completion"][:len("".join(steps))]
        assert len(steps) == len(soft) == len(hard) <= cfg.prm.max_steps
        for k, (label, any_verified) in enumerate(zip(soft, hard)):
            assert 0 <= label <= 1 and label * ROLLOUTS == round(label * ROLLOUTS), label  # a share of 4 rollouts
            assert any_verified == (label > 0)
        if steps and "".join(steps) == record["completion"]:  # its last step: the completion's own verdict
            own = verdict(record["question"], record["completion"], record["answer"], {}) == 1.0
            assert soft[-1] == float(own), record
        labelled += len(soft)
    assert summary["labelled_steps"] == labelled
    assert 0 < summary["mean_soft_label"] < 1  # the premise: some steps lead to a right answer, some do not
    assert summary["heldout_completions"] == 3 * 4 and all(r["heldout"] == (r["problem"] >= 9) for r in records)


def test_the_trained_prm_fits_held_out_labels_better_than_its_start(prm_run):
    summary = prm_run[2]
    assert summary["heldout_before"]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a zero head: 0.5 everywhere
    assert summary["heldout_after"]["loss"] < 0.8 * summary["heldout_before"]["loss"]


def test_the_saved_prm_reads_back_and_scores_search_steps(prm_run, tiny_base_model):
    cfg, out, _, _ = prm_run
    params, head, model_cfg, tokenizer = load_prm(str(out))
    assert float(jnp.abs(head["w"]).sum()) > 0
    prompt = tokenizer.encode("What is 3+4?")
    tokens = jnp.asarray([prompt]), jnp.ones((1, len(prompt)), bool)
    score = prm_scorer(params, head, model_cfg)
    expected = jax.nn.sigmoid(step_logits(params, head, *tokens, model_cfg)[0, -1])
    np.testing.assert_allclose(score(*map(np.asarray, tokens)), [expected], rtol=1e-6)
    found = step_beam_search(params, model_cfg, tokenizer, prompt, score, delimiter_table(tokenizer, ","),
                             beam=2, expand=2, max_steps=3, max_step_tokens=8,
                             sampling=SamplingParams(max_new_tokens=8), rng=jax.random.key(0))
    assert found and all(0 <= token < model_cfg.vocab_size for token in found)


def test_a_prm_needs_a_prompt_to_train_on_and_one_to_measure():
    with pytest.raises(ConfigError, match=r"prm\.num_prompts"):
        tiny_config("prm.num_prompts=1")


def test_the_command_prints_its_summary(tiny_base_model, tmp_path):
    result = subprocess.run([sys.executable, "-m", "rlreason", "prm", "configs/demo_cpu.yaml", *TINY_OVERRIDES,
                             *SETTINGS, "prm.steps=2", "prm.num_prompts=4", "--model", str(tiny_base_model),
                             "--out", str(tmp_path / "prm"), "--quiet"],
                            cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "labelled steps of 16 completions" in result.stdout
    assert {path.name for path in (tmp_path / "prm").iterdir()} == {"model", "prm_head.npz", "labels.jsonl",
                                                                     "summary.json"}
