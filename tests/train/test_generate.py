"""`rlreason generate`: the kept rows are exactly the verified, distinct completions of the same samples an
evaluation draws, each re-verified here by the reward functions on its text, and the file trains as SFT data."""

from __future__ import annotations

import json

import pytest
from tiny_run import TINY_OVERRIDES, tiny_config

from rlreason import cli
from rlreason.config import load_config
from rlreason.data.sft import load_sft_rows
from rlreason.models.store import load_model
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules
from rlreason.train.evaluate import build_evaluator
from rlreason.train.generate import generate, select_verified
from rlreason.verifiers.base import get_reward_fn

SAMPLES = 4
# Long enough for the tiny base model's R1 completions, and cool enough that some are right.
SETTINGS = ["sampling.max_completion_length=40", f"generate.num_samples={SAMPLES}", "generate.temperature=0.5",
            f"eval.num_samples={SAMPLES}", "eval.temperature=0.5", "generate.split=eval", "task.num_eval=32",
            "generate.num_prompts=0"]  # all of the split


def sample(completion: str, length: int, strict: bool, correct: bool = True) -> dict:
    return {"completion": completion, "length": length, "strict": strict, "correct": correct}


def settings(*overrides):
    return load_config(overrides=list(overrides)).generate


def test_best_of_k_keeps_the_shortest_verified():
    rows = [sample("a long one", 9, True), sample("short", 2, False), sample("mid", 5, True), sample("mid ", 5, True)]
    assert [row["completion"] for row in select_verified(rows, settings())] == ["mid"]
    everything = settings("generate.max_per_prompt=8")
    assert [row["completion"] for row in select_verified(rows, everything)] == ["mid", "a long one"]  # "mid " twice
    in_order = settings("generate.max_per_prompt=8", "generate.shortest=false")
    assert [row["completion"] for row in select_verified(rows, in_order)] == ["a long one", "mid"]
    unformatted = settings("generate.max_per_prompt=8", "generate.require_format=false")
    assert len(select_verified(rows, unformatted)) == 4 - 1  # every sample is correct; "mid " is a duplicate
    assert select_verified([sample("x", 1, False, correct=False)], unformatted) == []


@pytest.fixture(scope="module")
def generated(tiny_base_model, tmp_path_factory):
    cfg = tiny_config(*SETTINGS, "generate.max_per_prompt=4", "generate.shortest=false")
    out_file = tmp_path_factory.mktemp("generate") / "kept.jsonl"
    summary = generate(cfg, str(tiny_base_model), str(out_file), show_progress=False)
    return cfg, summary, [json.loads(line) for line in out_file.read_text().splitlines()], out_file


def test_the_kept_rows_are_the_verified_samples(tiny_base_model, generated):
    cfg, summary, kept, _ = generated
    params, model_cfg, tokenizer = load_model(tiny_base_model)
    mesh = make_mesh(cfg.mesh)
    evaluated = build_evaluator(cfg, model_cfg, tokenizer, mesh, axis_rules(cfg.mesh)).evaluate_all(params)["heldout"]
    verified = {}
    for row in evaluated.rows:
        if row["strict"]:
            verified.setdefault((row["problem"], row["completion"].strip()), row)
    assert 0 < len(verified) < len(evaluated.rows)  # the filter has something to keep and something to drop
    assert {(row["source"]["problem"], row["response"].strip()) for row in kept} == set(verified)
    assert summary["kept"] == len(kept) and summary["samples"] == 32 * SAMPLES
    for row in kept:
        for name in ("r1_format", "exact_answer"):
            assert get_reward_fn(name)("", row["response"], row["answer"], {}) == 1.0, (name, row)
        assert row["source"]["model"] == str(tiny_base_model) and row["source"]["num_samples"] == SAMPLES


def test_the_file_is_sft_data(tiny_base_model, generated):
    cfg, _, kept, out_file = generated
    _, _, tokenizer = load_model(tiny_base_model)
    rows = load_sft_rows(tiny_config(f"sft.path={out_file}", "sft.seq_len=128"), tokenizer)
    assert rows.num_examples == len(kept) and rows.skipped_rows == 0


def test_the_command_writes_the_file(tiny_base_model, tmp_path, capsys):
    out_file = tmp_path / "kept.jsonl"
    code = cli.main(["generate", "configs/demo_cpu.yaml", *TINY_OVERRIDES, *SETTINGS, "task.num_eval=8",
                     "--model", str(tiny_base_model), "--out", str(out_file), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"generate: {8 * SAMPLES} samples of 8 prompts" in out and str(out_file) in out
    assert out_file.is_file()
