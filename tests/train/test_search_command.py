"""`rlreason search`: every method's accuracy is the mean of its rows' verdicts, re-checked here with the verifier
functions themselves; each search point's cost is what its sampler generated, and its baseline is maj@k at the
smallest k that costs as much; the plain-sample curves are the evaluation's rows'; the expert-iteration rows are
verified solutions that `rlreason sft` reads; a missing PRM is named; the command prints its table."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from tiny_run import TINY_OVERRIDES, tiny_config
from train_runs import REPO, child_env

from rlreason.config import ConfigError
from rlreason.data.sft import read_sft_examples
from rlreason.train.prm import prm
from rlreason.train.search import search
from rlreason.verifiers.base import get_reward_fn
from rlreason.verifiers.lenient import lenient_version

# As in test_prm_command: the tiny model rarely closes <answer>, so the last number is what gets verified.
REWARDS = ["grpo.rewards=[{name: gsm8k_last_number}]", "grpo.accuracy_reward=gsm8k_last_number"]
SEARCH = ["task.num_eval=4", "eval.num_samples=4", "search.beam_widths=[1,2]", "search.simulations=[2,4]",
          "search.beam_expand=2", "search.mcts_expand=2", "search.max_steps=3", "search.max_step_tokens=8",
          "search.train_problems=4", "search.train_simulations=3", "search.num_rollouts=2"]


@pytest.fixture(scope="module")
def prm_dir(tiny_base_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("search_prm")
    prm(tiny_config(*REWARDS, "prm.num_prompts=4", "prm.num_samples=2", "prm.num_rollouts=2", "prm.max_steps=3",
                    "prm.steps=4", "prm.batch_size=4"), str(tiny_base_model), str(out), show_progress=False)
    return out


@pytest.fixture(scope="module")
def search_run(tiny_base_model, prm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    cfg = tiny_config(*REWARDS, *SEARCH, f"eval.prm={prm_dir}")
    summary = search(cfg, str(tiny_base_model), str(out), show_progress=False)
    return cfg, out, summary


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_search_point_is_its_rows_verdicts_and_generated_tokens(search_run):
    cfg, out, summary = search_run
    accuracy, lenient = get_reward_fn("gsm8k_last_number"), get_reward_fn(lenient_version("gsm8k_last_number"))
    golds = [row["gold"] for row in read(out / "samples.jsonl")][::cfg.eval.num_samples]
    assert [(point["method"], point["setting"]) for point in summary["search"]] == \
        [("beam", 1), ("beam", 2), ("mcts", 2), ("mcts", 4)]
    for point in summary["search"]:
        rows = read(out / f"{point['method']}_{point['setting']}.jsonl")
        assert [row["problem"] for row in rows] == list(range(4))
        for row, gold in zip(rows, golds):
            right = accuracy("", row["completion"], gold, {}) == 1.0
            assert row["lenient"] == (right or lenient("", row["completion"], gold, {}) == 1.0)
            assert not row["strict"] or right
            assert row["tokens_generated"] >= row["length"] > 0  # a search samples at least what it keeps
        assert point["lenient"] == pytest.approx(np.mean([row["lenient"] for row in rows]))
        assert point["strict"] == pytest.approx(np.mean([row["strict"] for row in rows]))
        assert point["tokens"] == pytest.approx(np.mean([row["tokens_generated"] for row in rows]))
    # One beam, more beams: more candidates sampled per problem.
    beam_1, beam_2 = summary["search"][:2]
    assert beam_2["tokens"] > beam_1["tokens"]


def test_the_baseline_is_maj_at_the_smallest_k_that_costs_as_much(search_run):
    _, _, summary = search_run
    samples = summary["sampling"]
    for point in summary["search"]:
        costlier = [sample for sample in samples if sample["tokens"] >= point["tokens"]]
        if costlier:
            assert point["maj_k_at_budget_lenient"] == costlier[0]["k"]
            assert point["maj_at_budget_lenient"] == costlier[0]["maj@k_lenient"]
            assert all(sample["tokens"] < point["tokens"] for sample in samples[:samples.index(costlier[0])])
        else:
            assert point["maj_k_at_budget_lenient"] is None and point["maj_at_budget_lenient"] is None


def test_the_sample_curves_are_the_evaluations_rows(search_run):
    cfg, out, summary = search_run
    rows = read(out / "samples.jsonl")
    assert len(rows) == 4 * cfg.eval.num_samples and all("prm_score" in row for row in rows)
    first, last = summary["sampling"][0], summary["sampling"][-1]
    assert first["k"] == 1 and last["k"] == cfg.eval.num_samples
    assert first["pass@k_lenient"] == pytest.approx(np.mean([row["lenient"] for row in rows]))
    assert first["tokens"] == pytest.approx(np.mean([row["length"] for row in rows]))
    assert {"maj@k_lenient", "prm_best@k_lenient", "prm_vote@k_lenient"} <= set(last)
    assert (out / "search.png").stat().st_size > 0
    table = (out / "search.md").read_text()
    assert "PRM beam search" in table and "MCTS (PRM values)" in table


def test_expert_iteration_rows_are_verified_solutions_sft_reads(search_run, tiny_base_model):
    cfg, out, summary = search_run
    rows = read(out / "mcts_sft.jsonl")
    counts = summary["expert_iteration"]
    assert counts["problems"] == 4 and counts["rows"] == len(rows) <= 4 * cfg.search.sft_per_problem
    accuracy = get_reward_fn("gsm8k_last_number")
    for row in rows:
        assert accuracy("", row["response"], row["answer"], {}) == 1.0 and row["source"]["search"] == "mcts"
    if rows:
        examples = read_sft_examples(str(out / "mcts_sft.jsonl"), "prompt", "response")
        assert [example.response for example in examples] == [row["response"] for row in rows]


def test_search_without_a_prm_names_the_key(tiny_base_model, tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.prm"):
        search(tiny_config(*SEARCH), str(tiny_base_model), str(tmp_path), show_progress=False)


def test_the_command_prints_every_method(tiny_base_model, prm_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "rlreason", "search", "configs/demo_cpu.yaml", *TINY_OVERRIDES,
                             *REWARDS, *SEARCH, "search.train_problems=0", "search.simulations=[2]",
                             "search.beam_widths=[2]", f"eval.prm={prm_dir}", "--model", str(tiny_base_model),
                             "--out", str(tmp_path / "search"), "--quiet"],
                            cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "search on 4 problems" in result.stdout and "beam 2: lenient" in result.stdout
    assert "mcts 2: lenient" in result.stdout and "expert iteration" not in result.stdout
