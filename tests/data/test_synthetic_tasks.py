"""Synthetic tasks: the same seed gives the same problems, eval problems are not training ones, answers are right."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from dataset_files import task_config

from rlreason.config import TaskConfig
from rlreason.data.examples import task_rows
from rlreason.data.synthetic import column_addition, generate, with_forgotten_carries
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


def test_addition_operands_are_zero_padded_unless_told_not_to():
    padded = task_rows(task_config("task.min_digits=1", "task.max_digits=2", "task.seed=3"), "train", 200)
    plain = task_rows(task_config("task.min_digits=1", "task.max_digits=2", "task.seed=3", "task.zero_pad=false"),
                      "train", 200)
    assert all(re.fullmatch(r"What is \d\d\+\d\d\?", example.question) for example in padded)
    assert [example.answer for example in plain] == [example.answer for example in padded]
    for example, padded_example in zip(plain, padded):
        a, b = re.fullmatch(r"What is (\d+)\+(\d+)\?", example.question).groups()
        assert a == str(int(a)) and b == str(int(b))  # no leading zeros
        assert padded_example.question == f"What is {int(a):02d}+{int(b):02d}?"


def test_question_format_puts_every_question_of_every_split():
    task = task_config("task.question_format='Q: {question} Answer with just the number.'")
    for split in ("train", "eval"):
        asked, plain = task_rows(task, split, 20), task_rows(task_config(), split, 20)
        assert [example.question for example in asked] == [
            f"Q: {example.question} Answer with just the number." for example in plain]
        assert [example.answer for example in asked] == [example.answer for example in plain]


def test_countdown_golds_use_every_number_once_and_reach_the_target():
    countdown = get_reward_fn("countdown")
    for example in task_rows(task_config("task.name=countdown", "task.countdown_numbers=4"), "train", 300):
        value, literals = evaluate_expression(example.answer)
        assert value == example.metadata["target"], example
        assert Counter(literals) == Counter(example.metadata["numbers"]), example
        completion = f"<answer>{example.answer}</answer>"
        assert countdown(example.question, completion, example.answer, example.metadata) == 1.0


def column_sum_without(a: int, b: int, forgotten: set[int]) -> int:
    """Reference: a + b column by column, dropping the carries out of the columns in `forgotten` (0: units)."""
    digits, carry, columns = [], 0, max(len(str(a)), len(str(b)))
    for column in range(columns):
        total = (a // 10**column) % 10 + (b // 10**column) % 10 + carry
        carry = 0 if column in forgotten else total // 10
        digits.append(total % 10)
    return sum(digit * 10**column for column, digit in enumerate(digits)) + carry * 10**columns


def test_forgotten_carries_give_the_answer_that_the_slipped_steps_give():
    assert column_addition(47, 85) == ("7+5=12 carry 1, 4+8+1=13 carry 1, so 132", "132")
    assert column_addition(47, 85, forget_carry=lambda: True) == ("7+5=12, 4+8=12, so 22", "22")
    forget_last = iter([False, True])
    assert column_addition(47, 85, forget_carry=lambda: next(forget_last)) == ("7+5=12 carry 1, 4+8+1=13, so 32", "32")
    rng = random.Random(0)
    for _ in range(300):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        solution, result = column_addition(a, b, forget_carry=lambda: rng.random() < 0.5)
        forgotten = {column for column, step in enumerate(solution.split(", ")[:-1])
                     if int(step.split("=")[1].split()[0]) >= 10 and "carry" not in step}
        assert int(result) == column_sum_without(a, b, forgotten), (a, b, solution)
        assert solution.endswith(f"so {result}")


def test_a_slip_rate_forgets_that_share_of_carries():
    problems = generate(TaskConfig(min_digits=2, max_digits=2), 4000, seed=0)
    rng = random.Random(1)
    assert [with_forgotten_carries(p, rng, 0.0) for p in problems[:200]] == problems[:200]
    for problem in problems[:200]:
        a, b = problem.operands
        assert with_forgotten_carries(problem, rng, 1.0).answer == str(column_sum_without(a, b, {0, 1}))
    # One digit: at most one carry; at rate 0.8 a problem that carries is right 20% of the time, the others always.
    problems = generate(TaskConfig(min_digits=1, max_digits=1), 4000, seed=0)
    right = sum(with_forgotten_carries(p, rng, 0.8).answer == p.answer for p in problems) / len(problems)
    share_carrying = sum(p.operands[0] + p.operands[1] >= 10 for p in problems) / len(problems)
    expected = 1 - 0.8 * share_carrying
    assert abs(right - expected) < 4 * (expected * (1 - expected) / len(problems)) ** 0.5
    with pytest.raises(ValueError, match="need an addition problem"):
        with_forgotten_carries(generate(TaskConfig(name="countdown"), 1, seed=0)[0], rng, 0.5)
