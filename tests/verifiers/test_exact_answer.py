"""`exact_answer` (normalized text, integers without leading zeros) and the GSM8K number rewards."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rlreason.verifiers.answers import (canonical_answer, exact_answer, gsm8k, gsm8k_last_number, last_number,
                                       number_only,
                                        parse_number)


@pytest.mark.parametrize("text,expected", [
    ("  132 ", "132"),
    ("0132", "132"),
    ("000", "0"),
    ("-007", "-7"),
    ("-0", "-0"),
    ("+5", "+5"),
    ("1 000", "1 000"),
    (" New \n\t York  ", "New York"),
    ("01.50", "01.50"),  # not an integer: compared as text
    ("١٢٣", "١٢٣"),  # Arabic-Indic digits are not digits
    ("１２３", "１２３"),  # nor are full-width ones
    ("9" * 10_000, "9" * 10_000),
])
def test_canonical_answer(text, expected):
    assert canonical_answer(text) == expected


@pytest.mark.parametrize("completion,gold,expected", [
    ("<think>t</think><answer>132</answer>", "132", 1.0),
    ("<think>t</think><answer> 0132\n</answer>", "132", 1.0),
    ("<think>t</think><answer>132</answer>", "0132", 1.0),
    ("<think>t</think><answer>-5</answer>", "-5", 1.0),
    ("<think>t</think><answer>- 5</answer>", "-5", 0.0),
    ("<think>t</think><answer>133</answer>", "132", 0.0),
    ("<think>t</think><answer>132.0</answer>", "132", 0.0),
    ("<think>t</think><answer>The answer is 132</answer>", "132", 0.0),
    ("<think>t</think><answer>１３２</answer>", "132", 0.0),
    ("<think>t</think><answer>new  york</answer>", "new york", 1.0),
    ("<think>t</think><answer>New York</answer>", "new york", 0.0),  # case matters
    ("<think>t</think>132", "132", 0.0),  # no answer tags
    ("<answer>132</answer> trailing", "132", 1.0),  # the format reward, not this one, punishes the tail
    ("<answer><answer>132</answer></answer>", "132", 0.0),
    ("<answer>132</answer>", "   ", None),  # an empty gold cannot be scored
])
def test_exact_answer(completion, gold, expected):
    assert exact_answer("prompt", completion, gold, {}) == expected


@pytest.mark.parametrize("text,expected", [
    ("18", Fraction(18)),
    ("-1,234.50", Fraction(-12345, 10)),
    ("0.5", Fraction(1, 2)),
    ("1,2,3", None),
    ("1e5", None),
    ("", None),
    ("١٨", None),
    ("1" * 101, None),  # longer than MAX_NUMBER_CHARS: rejected before conversion
])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("She pays $1,200. Then 3 more.", Fraction(3)),
    ("costs $1,200.", Fraction(1200)),
    ("the numbers 1,2,3", Fraction(3)),
    ("-4 degrees", Fraction(-4)),
    ("no digits here", None),
    ("full width １２３", None),
])
def test_last_number(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize("completion,gold,tag_required,tag_optional", [
    ("<think>6 * 3</think><answer>18</answer>", "18", 1.0, 1.0),
    ("<think>t</think><answer>$18.00</answer>", "18", 1.0, 1.0),
    ("<think>t</think><answer>1,000 apples</answer>", "1000", 1.0, 1.0),
    ("<think>t</think><answer>1000</answer>", "1,000", 1.0, 1.0),
    ("<think>t</think><answer>It is 17, no 18</answer>", "18", 0.0, 1.0),  # two numbers: only the lenient one
    ("<think>t</think><answer>17</answer> or 18", "18", 0.0, 0.0),  # with tags, only the answer counts
    ("6 * 3 = 18", "18", 0.0, 1.0),  # no tags: only the fallback reads the completion
    ("6 * 3 = 18, not 19", "18", 0.0, 0.0),
    ("<think>t</think><answer>0.5</answer>", "0.50", 1.0, 1.0),
    ("<think>t</think><answer>18</answer>", "eighteen", None, None),  # a non-numeric gold cannot be scored
])
def test_gsm8k(completion, gold, tag_required, tag_optional):
    assert gsm8k("prompt", completion, gold, {}) == tag_required
    assert gsm8k_last_number("prompt", completion, gold, {}) == tag_optional


@pytest.mark.parametrize("completion, gold, expected", [
    ("11", "11", 1.0),
    (" 11.\n", "11", 1.0),
    ("$11", "11", 1.0),
    ("11 apples", "11", 1.0),
    ("7 + 4 = 11", "11", 0.0),  # right, but not just the number: gsm8k_last_number's credit, not this one's
    ("The answer is 11", "11", 0.0),
    ("11 or 12", "11", 0.0),
    ("12", "11", 0.0),
    ("", "11", 0.0),
    ("11", "eleven", None),
])
def test_number_only_pays_a_reply_that_is_just_the_right_number(completion, gold, expected):
    assert number_only("prompt", completion, gold, {}) == expected
