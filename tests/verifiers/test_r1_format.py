"""`r1_format` and answer extraction on hand-written completions."""

from __future__ import annotations

import pytest

from rlreason.verifiers.format import extract_answer, r1_format

FORMAT_CASES = [
    ("<think>2 + 2 = 4</think><answer>4</answer>", 1.0),
    ("  \n<think> reasoning </think>\n\n<answer> 4 </answer>\n ", 1.0),
    ("<think></think><answer></answer>", 1.0),
    ("<think>a</think>\t<answer>b</answer>\u3000", 1.0),  # Unicode whitespace is whitespace
    ("<think>a</think> <answer>b</answer> done", 0.0),  # text after </answer>
    ("Sure! <think>a</think><answer>b</answer>", 0.0),  # text before <think>
    ("<think>a</think> so <answer>b</answer>", 0.0),  # text between the blocks
    ("<answer>b</answer><think>a</think>", 0.0),  # blocks out of order
    ("<think>a<answer>b</think></answer>", 0.0),  # tags interleaved
    ("<think><think>a</think></think><answer>b</answer>", 0.0),  # nested think
    ("<think>a</think><answer><answer>1</answer></answer>", 0.0),  # nested answer
    ("<think>a</think><answer>b", 0.0),  # unclosed answer
    ("<think>a</think>", 0.0),
    ("a</think><answer>b</answer>", 0.0),  # prompt ended with <think>: judged as is
    ("", 0.0),
    ("<think>I will write <answer> later</think><answer>b</answer>", 0.0),  # a tag mentioned while thinking
]


@pytest.mark.parametrize("completion,expected", FORMAT_CASES)
def test_r1_format(completion, expected):
    assert r1_format("any prompt", completion, "gold", {}) == expected


@pytest.mark.parametrize("completion,expected", [
    ("<think>x</think><answer> 42 </answer>", " 42 "),
    ("no think block <answer>42</answer> trailing text", "42"),
    ("<answer></answer>", ""),
    ("<answer>1</answer><answer>2</answer>", None),
    ("<answer><answer>1</answer></answer>", None),
    ("</answer>1<answer>", None),
    ("<answer>1", None),
    ("42", None),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected
