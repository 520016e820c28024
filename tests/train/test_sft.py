"""`rlreason sft`: the loss is the response tokens' negative log-likelihood (checked against a float64 numpy
reference from the model's own logits), packing changes nothing but the row count, training on worked
solutions lowers it, and a run stopped after a checkpoint resumes to the uninterrupted run's result."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import TINY_OVERRIDES, tiny_config
from train_runs import metric_rows, saved_steps, without_timing

from rlreason import cli
from rlreason.data import synthetic
from rlreason.data.sft import load_sft_rows
from rlreason.models.store import load_model
from rlreason.models.transformer import forward
from rlreason.tokenizers.templates import render_prompt
from rlreason.train.sft import response_nll, sft

NUM_EXAMPLES = 24


@pytest.fixture(scope="module")
def worked_solutions(tmp_path_factory):
    """An SFT file of the tiny task's problems with correct R1-format worked solutions."""
    cfg = tiny_config()
    problems = synthetic.generate(cfg.task, NUM_EXAMPLES, seed=99)
    path = tmp_path_factory.mktemp("sft_data") / "worked.jsonl"
    path.write_text("".join(json.dumps({"prompt": problem.question, "response": synthetic.r1_completion(problem)})
                            + "\n" for problem in problems))
    return path


def sft_config(model_dir, data, out_dir, *overrides):
    return tiny_config(f"train.model_dir={model_dir}", f"sft.path={data}", f"train.out_dir={out_dir}",
                       "sft.seq_len=96", "train.batch_size=4", "sft.optim.schedule=constant",
                       "sft.optim.warmup_steps=0", "sft.optim.learning_rate=0.001", "checkpoint.every_seconds=0",
                       *overrides)


def reference_nll(params, model_cfg, tokenizer, cfg, prompt: str, response: str) -> tuple[float, int]:
    """(summed NLL, tokens) of `response` + EOS after the templated prompt, from the logits of the example alone
    in a row, log-softmax taken in float64."""
    prompt_ids = tokenizer.encode(render_prompt(prompt, cfg.tokenizer.template, tokenizer))
    response_ids = tokenizer.encode(response) + [tokenizer.eos_id]
    ids = np.asarray(prompt_ids + response_ids)
    logits, _ = forward(params, jnp.asarray(ids[None, :-1]), jnp.arange(len(ids) - 1)[None],
                        jnp.ones((1, len(ids) - 1), bool), model_cfg)
    logits = np.asarray(logits[0], np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    targets = np.arange(len(prompt_ids) - 1, len(ids) - 1)  # the positions that predict response tokens
    return -float(log_probs[targets, ids[targets + 1]].sum()), len(response_ids), float(np.abs(logits).max())


@pytest.mark.parametrize("packing", [True, False])
def test_the_loss_is_the_responses_nll(tiny_base_model, worked_solutions, tmp_path, packing):
    cfg = sft_config(tiny_base_model, worked_solutions, tmp_path, f"sft.packing={packing}")
    params, model_cfg, tokenizer = load_model(tiny_base_model)
    rows = load_sft_rows(cfg, tokenizer)
    batch = {key: jnp.asarray(value) for key, value in rows[np.arange(len(rows))].items()}
    total, count = jax.jit(response_nll, static_argnums=2)(params, batch, model_cfg)
    expected_total, expected_count, largest = 0.0, 0, 0.0
    for line in worked_solutions.read_text().splitlines():
        example = json.loads(line)
        nll, tokens, biggest = reference_nll(params, model_cfg, tokenizer, cfg, example["prompt"], example["response"])
        expected_total, expected_count, largest = expected_total + nll, expected_count + tokens, max(largest, biggest)
    assert int(count) == expected_count
    assert (len(rows) < NUM_EXAMPLES) == packing
    # float32 logits and log-softmax: a few roundings of the largest logit per token.
    tolerance = expected_count * 16 * np.finfo(np.float32).eps * (largest + np.log(model_cfg.vocab_size))
    assert abs(float(total) - expected_total) <= tolerance


STEPS = 6


@pytest.fixture(scope="module")
def sft_run(tiny_base_model, worked_solutions, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("sft_run")
    cfg = sft_config(tiny_base_model, worked_solutions, out_dir, f"train.steps={STEPS}", "checkpoint.every_steps=3",
                     "checkpoint.keep_last=2")
    return out_dir, sft(cfg, show_progress=False)[1]


def mean_nll(model_dir, cfg) -> float:
    """The mean response NLL of the whole SFT set under a model directory's params."""
    params, model_cfg, tokenizer = load_model(model_dir)
    rows = load_sft_rows(cfg, tokenizer)
    batch = {key: jnp.asarray(value) for key, value in rows[np.arange(len(rows))].items()}
    total, count = jax.jit(response_nll, static_argnums=2)(params, batch, model_cfg)
    return float(total) / int(count)


def test_training_on_worked_solutions_lowers_the_loss(tiny_base_model, worked_solutions, sft_run):
    out_dir, history = sft_run
    cfg = sft_config(tiny_base_model, worked_solutions, out_dir)
    assert mean_nll(out_dir / "model", cfg) < 0.9 * mean_nll(tiny_base_model, cfg)  # measured: 0.57 -> 0.47
    assert [row["step"] for row in metric_rows(out_dir)] == list(range(1, STEPS + 1))
    assert all(row["nonfinite_updates"] == 0 and row["response_tokens"] > 0 for row in history)
    assert saved_steps(out_dir / "checkpoints") == [3, STEPS]
    assert (out_dir / "model" / "model.yaml").is_file()


def test_a_stopped_run_resumes_to_the_same_result(tiny_base_model, worked_solutions, sft_run, tmp_path):
    reference_dir, _ = sft_run
    out_dir = tmp_path / "resumed"
    shutil.copytree(reference_dir, out_dir)
    shutil.rmtree(out_dir / "checkpoints" / str(STEPS))  # as if stopped after the checkpoint of step 3
    shutil.rmtree(out_dir / "model")
    cfg = sft_config(tiny_base_model, worked_solutions, out_dir, f"train.steps={STEPS}", "checkpoint.every_steps=3",
                     "checkpoint.keep_last=2")
    _, history = sft(cfg, show_progress=False)
    assert [row["step"] for row in metric_rows(out_dir)] == list(range(1, STEPS + 1))
    assert without_timing(metric_rows(out_dir)) == without_timing(metric_rows(reference_dir))
    for leaf, reference in zip(jax.tree.leaves(load_model(out_dir / "model")[0]),
                               jax.tree.leaves(load_model(reference_dir / "model")[0]), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(reference))


def test_the_command_without_data_names_the_key(tiny_base_model, tmp_path, capsys):
    code = cli.main(["sft", "configs/demo_cpu.yaml", *TINY_OVERRIDES, f"train.model_dir={tiny_base_model}",
                     f"train.out_dir={tmp_path / 'run'}"])
    assert code == 2
    assert "rlreason sft: error: config key 'sft.path' is empty" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
