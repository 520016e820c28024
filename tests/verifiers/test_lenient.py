"""Strict and lenient accuracy on hand-made completions: the lenient checks, and `verdicts` over score columns."""

import numpy as np
import pytest

from rlreason.verifiers.base import get_reward_fn
from rlreason.verifiers.lenient import (accuracy_functions, last_boxed, lenient_answer_text, metric_only_functions,
                                        verdicts)
from rlreason.verifiers.scoring import score_texts

R1_RIGHT = " <think>7+5=12 carry 1, 4+8+1=13, so 132</think> <answer>132</answer>"
R1_WRONG = " <think>7+5=12, 4+8=12, so 122</think> <answer>122</answer>"
PLAIN_RIGHT = " 7+5=12 carry 1, 4+8+1=13, so 132. The answer is 132."
PLAIN_WRONG_LAST = " The answer is 132, or maybe 131."
TAG_RIGHT_BAD_FORMAT = " so <answer>132</answer> done"


@pytest.mark.parametrize("completion,expected", [
    (R1_RIGHT, 1.0), (R1_WRONG, 0.0), (PLAIN_RIGHT, 1.0), (PLAIN_WRONG_LAST, 0.0), (TAG_RIGHT_BAD_FORMAT, 1.0),
    (" I think it is \\boxed{132} but 7 carries", 1.0),  # the boxed answer wins over a later number
    (" 1,32", 0.0), (" total 132.0", 1.0), ("", 0.0), (" <answer>0132</answer>", 1.0),
])
def test_lenient_answer_finds_the_answer_wherever_it_is_written(completion, expected):
    assert get_reward_fn("lenient_answer")("", completion, "132", {}) == expected


def test_lenient_answer_cannot_score_an_empty_gold():
    assert get_reward_fn("lenient_answer")("", PLAIN_RIGHT, " ", {}) is None


def test_last_boxed_balances_braces_and_takes_the_last():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("no box") is None


def test_lenient_answer_text_for_majority_votes():
    assert lenient_answer_text(R1_RIGHT) == "132"
    assert lenient_answer_text(" so \\boxed{ 7 } or 8") == "7"
    assert lenient_answer_text(" so 1,200 apples") == "1200"
    assert lenient_answer_text(" no numbers") is None


@pytest.mark.parametrize("completion,expected", [
    (" <answer>(3+5)*2</answer>", 1.0),  # strict countdown already right
    (" I try 3+5=8 then 8*2=16, so (3+5)*2 = 16", 1.0),  # the expression is in the prose
    (" (5+3)*2", 1.0),
    (" 3*5+2 = 17", 0.0),  # wrong value
    (" (3+5)*2*1 = 16", 0.0),  # a number that was not given
    (" 16", 0.0),  # the target alone is no equation
])
def test_lenient_countdown(completion, expected):
    metadata = {"numbers": [3, 5, 2], "target": 16}
    assert get_reward_fn("lenient_countdown")("", completion, "(3+5)*2", metadata) == expected


def test_lenient_countdown_without_the_puzzle_cannot_score():
    assert get_reward_fn("lenient_countdown")("", " (3+5)*2", "(3+5)*2", {}) is None


def test_lenient_math_reads_the_whole_completion_through_math_verify(pool):
    fns = [get_reward_fn("math_equiv"), get_reward_fn("lenient_math")]
    completions = [" so the probability is $\\frac{1}{2}$.", " <answer>0.5</answer>", " it is \\boxed{\\frac{2}{3}}"]
    scores = score_texts(fns, [""] * 3, completions, ["\\frac{1}{2}"] * 3, [{}] * 3, pool, timeout_s=20.0)
    np.testing.assert_array_equal(scores, [[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])


def test_the_functions_each_view_needs():
    assert accuracy_functions("exact_answer") == ("r1_format", "exact_answer", "lenient_answer")
    assert metric_only_functions(["r1_format", "exact_answer"], "exact_answer") == ("lenient_answer",)
    assert metric_only_functions(["gsm8k_last_number"], "gsm8k_last_number") == ("r1_format", "lenient_answer")
    assert accuracy_functions("my_reward") == ("r1_format", "my_reward")  # no lenient version: itself


def test_verdicts_strict_needs_format_and_answer_lenient_needs_the_answer_anywhere(pool):
    completions = [R1_RIGHT, R1_WRONG, PLAIN_RIGHT, TAG_RIGHT_BAD_FORMAT, PLAIN_WRONG_LAST]
    columns = accuracy_functions("exact_answer")
    fns = [get_reward_fn(name) for name in columns]
    scores = score_texts(fns, [""] * 5, completions, ["132"] * 5, [{}] * 5, pool, timeout_s=5.0)
    with_format = verdicts(scores, columns, ["r1_format", "exact_answer"], "exact_answer")
    assert with_format["strict"].tolist() == [True, False, False, False, False]
    assert with_format["answer"].tolist() == [True, False, False, True, False]
    assert with_format["lenient"].tolist() == [True, False, True, True, False]
    assert with_format["format"].tolist() == [True, True, False, False, False]
    # A run without a format reward: strict is the accuracy reward alone.
    assert verdicts(scores, columns, ["exact_answer"], "exact_answer")["strict"].tolist() == [True, False, False,
                                                                                            True, False]


def test_verdicts_count_nan_as_wrong_and_name_a_missing_column():
    scores = np.array([[1.0, np.nan, 1.0]], np.float32)
    assert verdicts(scores, accuracy_functions("exact_answer"), ["exact_answer"], "exact_answer")["strict"].tolist() \
        == [False]
    with pytest.raises(ValueError, match="no column for exact_answer"):
        verdicts(scores[:, :2], ("r1_format", "lenient_answer"), ["exact_answer"], "exact_answer")
    # Without the lenient version's column (a step scored on tokens) there is no lenient verdict.
    assert "lenient" not in verdicts(scores[:, :2], ("r1_format", "exact_answer"), ["exact_answer"], "exact_answer")
