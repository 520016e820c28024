"""Synthetic tasks: the same seed gives the same problems, eval problems are not training ones, answers are right."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from dataset_files import task_config

from rlreason.data.examples import task_rows
from rlreason.verifiers import get_reward_fn
from rlreason.verifiers.countdown import evaluate_expression

WIDE = ("task.min_digits=3", "task.max_digits=6")  # a problem space large enough that random repeats are rare


@pytest.mark.parametrize("name", ["addition", "multiplication", "countdown"])
def test_same_seed_same_problems_and_eval_is_disjoint_from_train(name):
    task = task_config(f"task.name={name}", "task.seed=11", "task.countdown_numbers=4", *WIDE)
    train = task_rows(task, "train", 300)
    assert train == task_rows(task, "train", 300)
    assert task_rows(task_config(f"task.name={name}", "task.seed=12", "task.countdown_numbers=4", *WIDE),
                         "train", 300) != train
    held_out = task_rows(task, "eval", 300)
    assert not {e.question for e in train} & {e.question for e in held_out}


@pytest.mark.parametrize("name, operator", [("addition", lambda a, b: a + b), ("multiplication", lambda a, b: a * b)])
def test_arithmetic_answers_are_right(name, operator):
    symbol = {"addition": "+", "multiplication": "*"}[name]
    for example in task_rows(task_config(f"task.name={name}", *WIDE), "train", 500):
        a, b = re.fullmatch(rf"What is (\d+)\{symbol}(\d+)\?", example.question).groups()
        assert example.answer == str(operator(int(a), int(b))), example


def test_countdown_golds_use_every_number_once_and_reach_the_target():
    countdown = get_reward_fn("countdown")
    for example in task_rows(task_config("task.name=countdown", "task.countdown_numbers=4"), "train", 300):
        value, literals = evaluate_expression(example.answer)
        assert value == example.metadata["target"], example
        assert Counter(literals) == Counter(example.metadata["numbers"]), example
        completion = f"<answer>{example.answer}</answer>"
        assert countdown(example.question, completion, example.answer, example.metadata) == 1.0
