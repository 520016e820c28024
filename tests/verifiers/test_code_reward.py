"""The `code_tests` reward: which code a completion offers, HumanEval's tests as a pass rate, and a GRPO run
on a code task (every completion scored in the sandbox)."""

from __future__ import annotations

import json

import pytest

from rlreason.config import TaskConfig
from rlreason.data.examples import task_rows
from rlreason.verifiers.code import code_tests, extract_code, humaneval_problem, humaneval_problems
from rlreason.verifiers.base import get_reward_fn
from rlreason.verifiers.isolation import shared_pool
from rlreason.verifiers.scoring import score_texts
from tiny_run import tiny_config

ADD = {"tests": ["assert candidate(1, 2) == 3", "assert candidate(-4, 4) == 0", "assert candidate(0, 0) == 0"],
       "entry_point": "add", "prompt_code": "def add(a, b):\n    \"\"\"a + b\"\"\"\n"}


@pytest.mark.parametrize("completion, code", [
    ("First\n```python\nx = 1\n```\nthen\n```python\ndef f():\n    pass\n```\n", "def f():\n    pass\n"),
    ("<think>easy</think><answer>def f(): pass</answer>", "def f(): pass"),
    ("    return a + b\n", "    return a + b\n"),
    ("   \n", None),
])
def test_the_code_a_completion_offers(completion, code):
    assert extract_code(completion) == code


@pytest.mark.parametrize("completion, reward", [
    ("```python\ndef add(a, b):\n    return a + b\n```", 1.0),
    ("    return a + b\n", 1.0),  # continues prompt_code's signature
    ("```python\ndef add(a, b):\n    return 0\n```", 2 / 3),  # right where the sum is 0
    ("```python\ndef add(a, b):\n    return a - b\n```", 1 / 3),
    ("I do not know.", 0.0),  # not code: does not even parse
    ("```python\ndef plus(a, b):\n    return a + b\n```", 0.0),  # the wrong function: prompt_code + it has no body
])
def test_the_reward_is_the_fraction_of_tests_passed(completion, reward):
    assert code_tests("", completion, "", ADD) == pytest.approx(reward)


def test_a_problem_without_tests_is_not_scored():
    assert code_tests("", "def add(a, b): return a + b", "", {"entry_point": "add"}) is None


def test_humaneval_canonical_solutions_pass_every_test_and_a_stub_fails_them():
    problems = humaneval_problems()
    assert len(problems) == 164
    first = humaneval_problem(problems[0])
    assert len(first["tests"]) == 7  # the seven asserts of HumanEval/0's check()
    for problem in problems[::33]:
        metadata = humaneval_problem(problem)
        assert code_tests("", f"```python\n{problem['prompt']}{problem['canonical_solution']}```", "", metadata) == 1.0
        assert code_tests("", "    return None\n", "", metadata) < 1.0, problem["task_id"]


def test_humaneval_task_holds_out_problems_by_seed():
    task = TaskConfig(name="humaneval", num_eval=20, max_gold_bytes=4096)
    train, held_out = task_rows(task, "train", 1000), task_rows(task, "eval", 1000)
    assert (len(train), len(held_out)) == (144, 20)
    assert not {row.location for row in train} & {row.location for row in held_out}
    assert held_out[0].metadata["tests"] and "```python\n" in held_out[0].question


def test_scored_through_the_registry_like_any_reward():
    completions = ["```python\ndef add(a, b):\n    return a + b\n```", "no code here"]
    rewards = score_texts([get_reward_fn("code_tests")], ["", ""], completions, ["", ""], [ADD, ADD],
                          shared_pool(), timeout_s=30.0)
    assert rewards.tolist() == [[1.0], [0.0]]


def test_a_grpo_run_on_a_code_task_scores_every_completion(tiny_base_model, tmp_path):
    from rlreason.train.loop import train

    data = tmp_path / "code.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"add {i}", "answer": "a + b", **ADD}) for i in range(12)))
    cfg = tiny_config(f"train.model_dir={tiny_base_model}", f"train.out_dir={tmp_path / 'run'}", "task.name=jsonl",
                      f"task.path={data}", "task.num_eval=4", "task.metadata_fields=[tests, entry_point, prompt_code]",
                      "task.max_gold_bytes=1024", "grpo.rewards=[{name: code_tests}]", "grpo.accuracy_reward=code_tests",
                      "checkpoint.every_steps=0")
    _, _, history = train(cfg, show_progress=False)
    assert len(history) == 2
    for metrics in history:
        assert metrics["frac_unscored"] == 0.0  # every completion ran in the sandbox and got a score
        assert 0.0 <= metrics["rewards/code_tests"] <= 1.0
