"""`math_equiv` through math-verify: equivalence cases, and that it runs outside the main thread."""

from __future__ import annotations

import threading

import pytest

from rlreason.verifiers.math import math_equiv


@pytest.mark.parametrize("answer,gold,expected", [
    ("0.5", "\\frac{1}{2}", 1.0),
    ("\\frac12", "0.5", 1.0),
    ("x^2+2x+1", "(x+1)^2", 1.0),  # a bare LaTeX answer is read as math
    ("2^{1/2}", "\\sqrt{2}", 1.0),
    ("$x = 3$", "3", 1.0),
    ("\\boxed{3}", "3", 1.0),
    ("\\{2, 1\\}", "\\{1,2\\}", 1.0),
    ("(1,2]", "(1,2]", 1.0),
    ("1,000", "1000", 1.0),
    ("0.333333", "\\frac{1}{3}", 1.0),  # math-verify rounds floats to 6 digits
    ("0.333", "\\frac{1}{3}", 0.0),
    ("2^{1/2}", "2", 0.0),
    ("17", "3", 0.0),
    ("", "3", 0.0),
    ("١٧", "17", 0.0),
])
def test_math_equivalence(answer, gold, expected):
    assert math_equiv("prompt", f"<think>t</think><answer>{answer}</answer>", gold, {}) == expected


def test_answer_tags_are_required():
    assert math_equiv("prompt", "The answer is $\\frac{1}{2}$", "0.5", {}) == 0.0


def test_unparseable_gold_is_not_applicable():
    assert math_equiv("prompt", "<answer>1</answer>", "", {}) is None


def test_runs_outside_the_main_thread():
    # math-verify's default signal-based timeouts raise in any thread but the main one (XLA callback threads).
    results = []
    thread = threading.Thread(target=lambda: results.append(
        math_equiv("prompt", "<answer>\\frac{2}{4}</answer>", "0.5", {})))
    thread.start()
    thread.join()
    assert results == [1.0]
