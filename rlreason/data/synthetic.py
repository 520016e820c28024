"""Synthetic reasoning tasks with worked solutions, generated reproducibly from a seed.

Each generator returns a `Problem`: the question, the gold answer, a worked solution (the reasoning that
goes inside `<think>`), and metadata for verifiers (countdown's numbers and target).
"""

from __future__ import annotations

import dataclasses
import random
from fractions import Fraction
from typing import Callable

from rlreason.config import TaskConfig


@dataclasses.dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    solution: str
    metadata: dict = dataclasses.field(default_factory=dict)
    operands: tuple[int, ...] = ()  # addition's a and b: what `with_forgotten_carries` recomputes from


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def column_addition(a: int, b: int, forget_carry: Callable[[], bool] = lambda: False) -> tuple[str, str]:
    """(worked solution, result) of a + b column by column, least significant digit first:
    `7+5=12 carry 1, 4+8+1=13 carry 1, so 132`.

    `forget_carry()` is asked at each carry; when it says yes, the solution neither notes that carry nor adds it
    to the next column or, after the last column, as the leading 1: `7+5=12, 4+8=12 carry 1, so 122`;
    `7+5=12 carry 1, 4+8+1=13, so 32`. The result is what the written steps give.
    """
    a_digits, b_digits = str(a)[::-1], str(b)[::-1]
    steps, digits, carry = [], [], 0
    for column in range(max(len(a_digits), len(b_digits))):
        x = int(a_digits[column]) if column < len(a_digits) else 0
        y = int(b_digits[column]) if column < len(b_digits) else 0
        total = x + y + carry
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        carry = 1 if total >= 10 and not forget_carry() else 0
        steps.append(f"{terms}={total}" + (" carry 1" if carry else ""))
        digits.append(str(total % 10))
    result = str(int(str(carry) + "".join(reversed(digits))))
    return ", ".join(steps) + f", so {result}", result


def addition(rng: random.Random, min_digits: int, max_digits: int, zero_pad: bool = True) -> Problem:
    """a + b with the column-wise steps of `column_addition`.

    With `zero_pad`, operands are written zero-padded to `max_digits` ("What is 07+85?"), so that every digit sits
    at a fixed distance from the end of the prompt: tiny models learn to read them in a few hundred steps.
    Pretrained models read "What is 7+85?" as people write it.
    """
    a, b = _number(rng, min_digits, max_digits), _number(rng, min_digits, max_digits)
    solution, result = column_addition(a, b)
    width = max_digits if zero_pad else 1
    return Problem(f"What is {a:0{width}d}+{b:0{width}d}?", result, solution, operands=(a, b))


def with_forgotten_carries(problem: Problem, rng: random.Random, rate: float) -> Problem:
    """`problem` (an addition) as a sloppy writer solves it: each carry is forgotten with probability `rate`, and
    the answer follows the slipped steps (see `column_addition`). For a base model with a habit that only a reward
    for right answers can break."""
    if len(problem.operands) != 2:
        raise ValueError(f"forgotten carries need an addition problem, got {problem.question!r}")
    solution, result = column_addition(*problem.operands, forget_carry=lambda: rng.random() < rate)
    return dataclasses.replace(problem, solution=solution, answer=result)


def multiplication(rng: random.Random, min_digits: int, max_digits: int) -> Problem:
    """a * b as partial products of b's digits, then their sum: `47*5=235, 47*80=3760, 235+3760=3995`."""
    a, b = _number(rng, min_digits, max_digits), _number(rng, 1, max(1, max_digits - 1))
    partials = [a * int(digit) * 10**place for place, digit in enumerate(str(b)[::-1]) if digit != "0"]
    factors = [int(digit) * 10**place for place, digit in enumerate(str(b)[::-1]) if digit != "0"]
    steps = [f"{a}*{factor}={partial}" for factor, partial in zip(factors, partials)]
    if len(partials) > 1:
        steps.append("+".join(map(str, partials)) + f"={a * b}")
    if not steps:
        steps = [f"{a}*0=0"]
    return Problem(f"What is {a}*{b}?", str(a * b), ", ".join(steps) + f", so {a * b}")


def countdown(rng: random.Random, count: int, max_number: int = 20) -> Problem:
    """Reach a target with every given number once and + - * /; built from a random expression, so solvable."""
    while True:
        numbers = [rng.randint(1, max_number) for _ in range(count)]
        values = [(Fraction(n), str(n)) for n in numbers]
        steps = []
        while len(values) > 1:
            (left, left_text), (right, right_text) = values.pop(0), values.pop(0)
            operator = rng.choice("+-*/" if right != 0 else "+-*")
            if operator == "/" and (right == 0 or (left / right).denominator != 1):
                operator = "+"
            value = {"+": left + right, "-": left - right, "*": left * right, "/": left / right if right else 0}[operator]
            steps.append(f"{left_text}{operator}{right_text}={value}")
            values.insert(0, (value, f"({left_text}{operator}{right_text})"))
        target, expression = values[0]
        if target > 0 and target.denominator == 1:
            break
    expression = expression[1:-1] if expression.startswith("(") and expression.endswith(")") else expression
    rng.shuffle(numbers)
    question = f"Using the numbers {numbers}, create an equation that equals {int(target)}."
    return Problem(question, expression, ", ".join(steps), {"numbers": numbers, "target": int(target)})


def make_problem(task: TaskConfig, rng: random.Random) -> Problem:
    if task.name == "addition":
        return addition(rng, task.min_digits, task.max_digits, task.zero_pad)
    if task.name == "multiplication":
        return multiplication(rng, task.min_digits, task.max_digits)
    if task.name == "countdown":
        return countdown(rng, task.countdown_numbers)
    raise ValueError(f"task.name={task.name!r} is not a synthetic task")


SYNTHETIC_TASKS = ("addition", "multiplication", "countdown")
# Held-out problems come from a seed stream disjoint from training's (training uses seed, seed + 1, ...).
EVAL_SEED_OFFSET = 1_000_003


def generate(task: TaskConfig, count: int, seed: int) -> list[Problem]:
    """`count` problems from `seed`: the same arguments always give the same problems."""
    rng = random.Random(seed)
    return [make_problem(task, rng) for _ in range(count)]


def r1_completion(problem: Problem) -> str:
    """The worked solution in the R1 format the verifiers reward."""
    return f" <think>{problem.solution}</think> <answer>{problem.answer}</answer>"


def plain_completion(problem: Problem) -> str:
    """The same solution without the R1 tags: what a base model mostly writes before RL."""
    return f" {problem.solution}. The answer is {problem.answer}."
