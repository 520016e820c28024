"""`rlreason prm`: Math-Shepherd labels of the policy's own samples, a PRM trained on them that fits the held-out
labels better than its untrained start, saved and read back, used as a step-level search scorer, and scoring
evaluation samples (eval.prm) for best-of-k by the PRM and PRM-weighted voting."""

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
from rlreason.data.encoding import left_pad
from rlreason.models.store import load_model
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules
from rlreason.sampling.sampler import SamplingParams, generate_groups
from rlreason.search.beam import beam_search
from rlreason.search.continuation import padded_rows
from rlreason.search.prm import completion_scores, load_prm, prm_scorer, step_logits
from rlreason.search.steps import delimiter_table, split_steps
from rlreason.tokenizers.templates import render_prompt
from rlreason.train.evaluate import build_evaluator
from rlreason.train.prm import prm
from rlreason.train.test_time import sample_curves
from rlreason.verifiers.base import get_reward_fn

ROLLOUTS = 4
# The tiny model rarely closes the <answer> tag, so exact_answer would label every step 0: the last number of the
# completion labels its steps instead.
SETTINGS = ["grpo.rewards=[{name: gsm8k_last_number}]", "grpo.accuracy_reward=gsm8k_last_number",
            "prm.num_prompts=12", "prm.num_samples=4", f"prm.num_rollouts={ROLLOUTS}", "prm.max_steps=4",
            "prm.steps=40", "prm.batch_size=8", "prm.optim.learning_rate=1e-3"]


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
    params, head, model_cfg, tokenizer, delimiter = load_prm(str(out))
    assert delimiter == cfg.prm.delimiter
    assert float(jnp.abs(head["w"]).sum()) > 0
    prompt = tokenizer.encode("What is 3+4?")
    tokens = jnp.asarray([prompt]), jnp.ones((1, len(prompt)), bool)
    score = prm_scorer(params, head, model_cfg)
    expected = jax.nn.sigmoid(step_logits(params, head, *tokens, model_cfg)[0, -1])
    np.testing.assert_allclose(score(*map(np.asarray, tokens)), [expected], rtol=1e-6)
    found = beam_search(params, model_cfg, tokenizer, [prompt], score, delimiter_table(tokenizer, ","), beam=2,
                        expand=2, max_steps=3, max_step_tokens=8, sampling=SamplingParams(max_new_tokens=8),
                        keys=jax.random.key(0)[None])[0]
    assert found.completion and all(0 <= token < model_cfg.vocab_size for token in found.completion)
    assert found.score == pytest.approx(float(score(*padded_rows([prompt + found.completion], len(prompt) + 24,
                                                                  tokenizer.pad_id))[0]), rel=1e-5)


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
    assert {path.name for path in (tmp_path / "prm").iterdir()} == {"model", "prm_head.npz", "prm.json",
                                                                     "labels.jsonl", "summary.json"}


def test_a_completion_scores_as_its_weakest_step_scored_prefix_by_prefix(prm_run, tiny_base_model):
    """completion_scores reads every step end of prompt + completion in one pass; scoring each step's prefix on its
    own, as beam search does, and taking the smallest must agree."""
    cfg = prm_run[0]
    prm_model = load_prm(str(prm_run[1]))
    policy, model_cfg, tokenizer = load_model(tiny_base_model)
    prompt = tokenizer.encode(render_prompt("What is 3+4?", cfg.tokenizer.template, tokenizer))
    prompt_tokens, prompt_mask = (np.asarray([row]) for row in left_pad(prompt, len(prompt), tokenizer.pad_id))
    roll = generate_groups(policy, prompt_tokens, prompt_mask, jax.random.key(3), model_cfg,
                           SamplingParams(max_new_tokens=24), 6, tokenizer.stop_ids, tokenizer.pad_id)
    table = delimiter_table(tokenizer, prm_model.delimiter)
    scores = np.asarray(completion_scores(prm_model.params, prm_model.head, prm_model.cfg, jnp.asarray(table),
                                          roll.prompt_tokens, roll.prompt_mask, roll.tokens, roll.completion_mask))
    score_prefix = prm_scorer(prm_model.params, prm_model.head, prm_model.cfg)
    steps = split_steps(roll.tokens, roll.completion_mask, jnp.asarray(table))
    checked = 0
    for row in range(len(scores)):
        ends = np.flatnonzero(np.asarray(steps.ends[row]))
        ids = np.asarray(roll.tokens[row])
        prefixes = [score_prefix(np.asarray([prompt + ids[:end + 1].tolist()]), np.ones((1, len(prompt) + end + 1),
                                                                                      bool))[0] for end in ends]
        expected = min(prefixes) if prefixes else 0.0
        np.testing.assert_allclose(scores[row], expected, rtol=1e-5, atol=1e-6)
        checked += len(prefixes) > 1
    assert checked  # some completion had several steps


def test_evaluation_gives_every_sample_its_prm_score_and_the_prm_curves(prm_run, tiny_base_model):
    out = prm_run[1]
    cfg = tiny_config(*SETTINGS, f"eval.prm={out}", "eval.num_samples=4")
    policy, model_cfg, tokenizer = load_model(tiny_base_model)
    evaluator = build_evaluator(cfg, model_cfg, tokenizer, make_mesh(cfg.mesh), axis_rules(cfg.mesh))
    rows = evaluator.evaluate(policy, evaluator.sets[0]).rows
    scores = [row["prm_score"] for row in rows]
    assert all(0 <= score <= 1 for score in scores) and len(set(scores)) > 1
    last = sample_curves(rows)[-1]
    assert {"prm_best@k_lenient", "prm_vote@k_lenient", "prm_best@k_strict", "prm_vote@k_strict"} <= set(last)
    assert "prm_score" not in build_evaluator(tiny_config(*SETTINGS), model_cfg, tokenizer, make_mesh(cfg.mesh),
                                              axis_rules(cfg.mesh)).evaluate(policy, evaluator.sets[0]).rows[0]


def test_a_prm_of_another_tokenizer_is_refused(prm_run, tmp_path):
    from rlreason.tokenizers import train_sentencepiece

    other = train_sentencepiece(["something else entirely, 1 2 3"] * 30, 40)
    cfg = tiny_config(*SETTINGS, f"eval.prm={prm_run[1]}", "sampling.max_prompt_length=64")
    policy_cfg = load_prm(str(prm_run[1])).cfg
    with pytest.raises(ConfigError, match=r"eval\.prm"):
        build_evaluator(cfg, policy_cfg, other, make_mesh(cfg.mesh), axis_rules(cfg.mesh))
