"""Evaluation: pass@k and maj@k against hand-computed cases, each view recomputed from the completions' text,
the score following the run's rewards, one compile for every set and call, samples that do not depend on the
batch layout or the device count, and the eval/ files cut back on resume."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from etils import epath

from tiny_run import TINY_OVERRIDES, tiny_config
from train_runs import REPO, child_env
from rlreason.train.evaluate import (EVAL_DIR, build_evaluator, cut_results, majority_vote, pass_at_k, summarize,
                                     summary_names, write_results, EvalResult)


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (8, 3, 4, 1 - 5 / 70),  # 1 - C(5,4)/C(8,4)
    (6, 1, 6, 1.0), (3, 0, 2, 0.0), (8, 3, 1, 3 / 8), (8, 5, 4, 1.0),
])
def test_pass_at_k_matches_the_closed_form(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(8, 0, 1), (8, 3, 4), (5, 2, 3), (6, 1, 6)])
def test_pass_at_k_equals_the_fraction_of_k_subsets_with_a_correct_sample(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


@pytest.mark.parametrize("answers, correct, expected", [
    (["4", "5", "4", None], [True, False, True, False], 1.0),  # a clear majority, right
    (["5", "5", "4"], [False, False, True], 0.0),  # a clear majority, wrong
    (["4", "5", "5", "4"], [True, False, False, True], 0.5),  # a 2-2 tie, one side right: a coin flip
    (["4", "5", "6"], [False, True, False], 1 / 3),  # a three-way tie, one right
    ([None, None, None, "4"], [False, False, False, True], 1.0),  # unparseable answers do not vote
    ([None, None], [False, False], 0.0),  # nothing to vote on
    (["7", None, "8", None], [False, False, True, False], 0.5),  # a tie among the parseable ones
])
def test_majority_vote_on_ties_and_unparseable_answers(answers, correct, expected):
    assert majority_vote(answers, correct) == pytest.approx(expected, rel=1e-12)
    order = np.random.default_rng(0).permutation(len(answers))  # the order of the samples does not matter
    assert majority_vote([answers[i] for i in order], [correct[i] for i in order]) == pytest.approx(expected)


def sample_row(completion: str, correct: bool, strict: bool, lenient: bool, formatted: bool, length: int = 5,
               reward: float | None = 1.0) -> dict:
    return {"completion": completion, "correct": correct, "strict": strict, "lenient": lenient, "format": formatted,
            "length": length, "reward": reward}


def test_summary_of_hand_made_samples():
    # Problem 1 (gold 7): two tagged 7s, one in the format; one untagged 7; one tagged 3.
    # Problem 2 (gold 2): nothing right anywhere; one tagged 5 in the format, the rest unparseable or untagged.
    rows = [
        sample_row("<think>.</think> <answer>7</answer>", True, True, True, True, length=4, reward=1.1),
        sample_row("<answer>7</answer> and more", True, False, True, False, length=6, reward=1.0),
        sample_row("it is 7", False, False, True, False, length=3, reward=0.0),
        sample_row("<think>.</think> <answer>3</answer>", False, False, False, True, length=5, reward=0.1),
        sample_row("<think>.</think> <answer>5</answer>", False, False, False, True, length=5, reward=0.1),
        sample_row("no idea", False, False, False, False, length=2, reward=0.0),
        sample_row("maybe 9", False, False, False, False, length=2, reward=None),
        sample_row("<answer>5</answer>", False, False, False, False, length=3, reward=0.0),
    ]
    summary = summarize(rows, 4)
    assert summary["pass@1"] == pytest.approx((2 / 4 + 0) / 2)
    assert summary["pass@1_strict"] == pytest.approx((1 / 4 + 0) / 2)
    assert summary["pass@1_lenient"] == pytest.approx((3 / 4 + 0) / 2)
    assert summary["pass@4"] == summary["pass@4_strict"] == summary["pass@4_lenient"] == pytest.approx(0.5)
    # answer view: problem 1 votes 7, 7, 3 -> 7 (right); problem 2 votes 5, 5 -> wrong.
    assert summary["maj@4"] == pytest.approx(0.5)
    # strict view: only formatted samples vote: problem 1 has 7 and 3, a tie, one right -> 0.5.
    assert summary["maj@4_strict"] == pytest.approx(0.25)
    # lenient view: problem 1 votes 7, 7, 7, 3 -> right; problem 2 votes 5, 9, 5 -> wrong.
    assert summary["maj@4_lenient"] == pytest.approx(0.5)
    assert summary["format"] == pytest.approx(3 / 8)
    assert summary["mean_length"] == pytest.approx(30 / 8)
    assert summary["reward"] == pytest.approx(2.3 / 7)  # the row no reward applies to is left out
    assert summary["num_problems"] == 2 and summary["samples_per_problem"] == 4
    assert set(summary) | {"verifier/timed_out_calls", "verifier/killed_calls"} == set(summary_names(4))


def evaluator_for(cfg, model_dir):
    from rlreason.models.store import load_model
    from rlreason.parallel.mesh import make_mesh
    from rlreason.parallel.rules import axis_rules

    mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
    params, model_cfg, tokenizer = load_model(model_dir)
    return build_evaluator(cfg, model_cfg, tokenizer, mesh, rules), params


def test_each_view_is_recomputed_from_the_completions_text(tiny_base_model):
    from rlreason.verifiers.answers import canonical_answer, last_number
    from rlreason.verifiers.format import extract_answer, is_r1_formatted

    cfg = tiny_config()
    evaluator, params = evaluator_for(cfg, tiny_base_model)
    result = evaluator.evaluate(params, evaluator.sets[0])
    rows, summary, k = result.rows, result.summary, cfg.eval.num_samples
    assert len(rows) == cfg.task.num_eval * k
    assert [(row["problem"], row["sample"]) for row in rows] == [(p, s) for p in range(cfg.task.num_eval)
                                                                  for s in range(k)]
    for row in rows:  # recomputed from the text: answer tag, R1 format, last number; the run's weighted reward
        tagged = extract_answer(row["completion"])
        in_tag = tagged is not None and canonical_answer(tagged) == row["gold"]
        assert row["answer"] == tagged
        assert row["correct"] == in_tag
        assert row["format"] == is_r1_formatted(row["completion"])
        assert row["strict"] == (in_tag and row["format"])
        assert row["lenient"] == (in_tag or last_number(row["completion"]) == int(row["gold"]))
        assert row["reward"] == pytest.approx(0.1 * row["format"] + 1.0 * in_tag)  # demo_cpu.yaml's weights
        assert row["rewards"] == {"r1_format": float(row["format"]), "exact_answer": float(in_tag),
                                  "lenient_answer": float(row["lenient"])}
    for view, key in (("strict", "pass@1_strict"), ("lenient", "pass@1_lenient"), ("correct", "pass@1")):
        assert summary[key] == pytest.approx(np.mean([row[view] for row in rows])), key
    assert summary["pass@1_lenient"] > summary["pass@1_strict"], "the tiny base model answers outside the format too"
    problems = [rows[i:i + k] for i in range(0, len(rows), k)]
    assert summary[f"pass@{k}_lenient"] == pytest.approx(np.mean([any(r["lenient"] for r in p) for p in problems]))


def test_the_score_follows_the_runs_rewards(tiny_base_model):
    """Without a format reward, strict accuracy is the answer alone, and the reward is the answer's."""
    cfg = tiny_config("grpo.rewards=[{name: exact_answer, weight: 2.0}]")
    evaluator, params = evaluator_for(cfg, tiny_base_model)
    rows = evaluator.evaluate(params, evaluator.sets[0]).rows
    for row in rows:
        assert row["strict"] == row["correct"]
        assert row["reward"] == 2.0 * row["correct"]
        assert list(row["rewards"]) == ["exact_answer", "r1_format", "lenient_answer"]


def test_compiled_once_and_the_same_samples_however_the_problems_are_batched(tiny_base_model):
    two_sets = "eval.sets=[{name: a}, {name: b, source: addition, num_problems: 3}]"
    evaluator, params = evaluator_for(tiny_config(two_sets, "eval.batch_size=8"), tiny_base_model)
    assert evaluator.problems_per_call == 8
    first = [evaluator.evaluate_all(params) for _ in range(2)]
    assert evaluator.sample._cache_size() == 1, "one compile for every set and every call"
    assert first[0]["a"].rows == first[1]["a"].rows and first[0]["b"].rows == first[1]["b"].rows
    small, _ = evaluator_for(tiny_config(two_sets, "eval.batch_size=3"), tiny_base_model)
    assert small.problems_per_call == 3
    batched = small.evaluate_all(params)
    for name in ("a", "b"):  # problem i's samples depend on i alone, not on its batch
        assert batched[name].rows == first[0][name].rows
        assert batched[name].summary == first[0][name].summary
    assert first[0]["b"].rows == first[0]["a"].rows[:3 * 4], "set b: the same generated problems, fewer"


def eval_command(model_dir, out_dir, *overrides) -> list[str]:
    return [sys.executable, "-m", "rlreason", "eval", "configs/demo_cpu.yaml", *TINY_OVERRIDES, "task.num_eval=6",
            "eval.batch_size=4", "mesh.data=-1", f"--model={model_dir}", f"--out={out_dir}", *overrides, "--quiet"]


def eval_outputs(out_dir) -> tuple[list[dict], list[dict]]:
    summary = [json.loads(line) for line in (out_dir / EVAL_DIR / "heldout.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (out_dir / EVAL_DIR / "heldout" / "step_0.jsonl").read_text().splitlines()]
    return summary, samples


def run_eval_child(model_dir, out_dir, *overrides) -> None:
    result = subprocess.run(eval_command(model_dir, out_dir, *overrides), cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.multiprocess
def test_the_same_numbers_on_one_device_four_devices_and_two_processes_of_two(tiny_base_model, tmp_path):
    """`rlreason eval` (6 problems in calls of 4, the last one padded) on 1 CPU device, sharded over 4, and over
    2 processes of 2 devices each that feed their own rows: the same summary and samples."""
    import portpicker

    run_eval_child(tiny_base_model, tmp_path / "one", "distributed.local_device_count=1")
    run_eval_child(tiny_base_model, tmp_path / "four", "distributed.local_device_count=4")
    port = portpicker.pick_unused_port()
    processes = [subprocess.Popen(eval_command(
        tiny_base_model, tmp_path / "two_by_two", "distributed.mode=manual",
        f"distributed.coordinator_address=127.0.0.1:{port}", "distributed.num_processes=2",
        f"distributed.process_id={index}", "distributed.local_device_count=2", "distributed.heartbeat_timeout_s=10"),
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in range(2)]
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    summary, samples = eval_outputs(tmp_path / "one")
    assert summary[0]["num_problems"] == 6 and len(samples) == 6 * 4
    assert len({row["completion"] for row in samples}) > 1
    assert eval_outputs(tmp_path / "four") == (summary, samples)
    assert eval_outputs(tmp_path / "two_by_two") == (summary, samples)


def test_resume_cuts_the_eval_files_back(tmp_path):
    run_dir = epath.Path(tmp_path)
    for step in (2, 4, 6):
        write_results(run_dir, step, {"heldout": EvalResult({"pass@1": step / 10}, [{"step_row": step}]),
                                      "gsm": EvalResult({"pass@1": step / 100}, [])})
    cut_results(run_dir, 4)
    for name, scale in (("heldout", 10), ("gsm", 100)):
        rows = [json.loads(line) for line in (run_dir / EVAL_DIR / f"{name}.jsonl").read_text().splitlines()]
        assert rows == [{"step": 2, "pass@1": 2 / scale}, {"step": 4, "pass@1": 4 / scale}]
        assert sorted(path.name for path in (run_dir / EVAL_DIR / name).iterdir()) == ["step_2.jsonl", "step_4.jsonl"]
    assert (run_dir / EVAL_DIR / "heldout" / "step_4.jsonl").read_text() == '{"step_row": 4}\n'

