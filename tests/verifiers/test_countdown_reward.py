"""Countdown: exact evaluation of a safe arithmetic subset, TinyZero's 1 / 0.1 / 0 rewards."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rlreason.verifiers.countdown import countdown, evaluate_expression

PUZZLE = {"numbers": [6, 7, 3, 2], "target": 28}


def _answer(expression: str) -> str:
    return f"<think>search</think><answer>{expression}</answer>"


@pytest.mark.parametrize("expression,expected", [
    ("(6 / 3 + 2) * 7", 1.0),
    (" 7 * ((6 / 3) + 2)\n", 1.0),
    ("6 * 7 / 3 * 2", 1.0),
    ("6 * 7 * (3 - 2)", 0.1),  # every number once, but 42
    ("6 * 7 + 3 - 3", 0.1),  # 3 twice, 2 missing
    ("(6 / 3) * 2 * 7 * 1", 0.1),  # a number that is not given
    ("6 / 3 * 14", 0.1),  # not every number
    ("(6 / 3 + 2) * 7 + 2 - 2", 0.1),  # 2 twice
    ("(6 / 3 + 2) * 7 = 28", 0.1),  # '=' is not part of an expression
    ("-6 + 7 * 3 + 2 * 6 + 1", 0.1),  # unary minus is not allowed
    ("(6 // 3 + 2) * 7", 0.1),  # floor division is not allowed
    ("(6 / 3 + 2) ** 7", 0.1),  # nor is exponentiation
    ("6 * 7 / (3 - 3) + 2", 0.1),  # division by zero
    ("the answer is 28", 0.1),
    ("", 0.1),
])
def test_countdown_rewards(expression, expected):
    assert countdown("prompt", _answer(expression), "", PUZZLE) == expected


def test_values_are_exact_fractions():
    assert evaluate_expression("1 / 10 + 2 / 10") == (Fraction(3, 10), [1, 10, 2, 10])  # 0.30000000000000004 as floats
    puzzle = {"numbers": [1, 10, 2, 10, 10], "target": 3}
    assert countdown("prompt", _answer("(1 / 10 + 2 / 10) * 10"), "", puzzle) == 1.0


def test_no_answer_tags_scores_zero():
    assert countdown("prompt", "<think>(6 / 3 + 2) * 7</think>", "", PUZZLE) == 0.0
    assert countdown("prompt", "<answer>(6 / 3 + 2) * 7", "", PUZZLE) == 0.0


@pytest.mark.parametrize("metadata", [{}, {"numbers": [3, 5]}, {"numbers": "3 5", "target": 8},
                                      {"numbers": [3, 5.0], "target": 8}, {"numbers": [3, 5], "target": "8"}])
def test_rows_without_a_puzzle_are_not_applicable(metadata):
    assert countdown("prompt", _answer("3 + 5"), "8", metadata) is None


@pytest.mark.parametrize("text", ["__import__('os')", "x + 1", "1.5 + 2", "0x10", "1_000", "1e3", "[1, 2]",
                                  "1 if 1 else 2", "05 + 1", "(1, 2)", "٣ + ٥", "３ + ５"])
def test_only_integer_arithmetic_is_evaluated(text):
    assert evaluate_expression(text) is None
