"""Answers compared as normalized text (`exact_answer`, the synthetic tasks) or as numbers (`gsm8k`, the
lenient `gsm8k_last_number`, and `number_only` for chat models asked for just the number).

Only ASCII digits are digits: `١٢٣` and full-width `１２３` are text, never the number 123. Golds are written
in ASCII, and the token-level version (digits split into single tokens) could not equate them anyway.
All parsing is regex matching without nested quantifiers (linear time), and numbers longer than
`MAX_NUMBER_CHARS` are rejected before conversion, so no input needs a time limit.
"""

from __future__ import annotations

import re
from fractions import Fraction

from rlreason.verifiers.base import reward_function
from rlreason.verifiers.format import extract_answer, unwrap

MAX_NUMBER_CHARS = 100

_INTEGER = re.compile(r"(-?)([0-9]+)")
# Commas only as thousands separators, so that "1,2,3" reads as three numbers rather than 123.
_NUMBER = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
# An optional currency sign, the number, an optional percent sign or unit without digits.
_ONLY_NUMBER = re.compile(r"(?:\\?\$\s*)?(?P<number>" + _NUMBER.pattern + r")"
                          r"\s*(?:\\?%|\\text\s*\{[^{}0-9]*\}|[A-Za-z][A-Za-z ]*)?")


def canonical_answer(text: str) -> str:
    """`text` with whitespace runs collapsed to one space and trimmed; an integer (`-?[0-9]+`) loses its
    leading zeros, so "0132" equals "132". A sign is kept as written: "-0" differs from "0", "+5" from "5".

    Digits are compared as text, never through int(), so a 10,000-digit answer is compared, not rejected.
    """
    collapsed = " ".join(text.split())
    integer = _INTEGER.fullmatch(collapsed)
    if integer:
        return integer[1] + (integer[2].lstrip("0") or "0")
    return collapsed


@reward_function("exact_answer")
def exact_answer(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """1.0 if the answer inside the only `<answer>…</answer>` equals `gold` after `canonical_answer`, else 0.0
    (also without such a tag pair); None when the gold answer is empty."""
    expected = canonical_answer(gold)
    if not expected:
        return None
    answer = extract_answer(completion)
    return 1.0 if answer is not None and canonical_answer(answer) == expected else 0.0


def parse_number(text: str) -> Fraction | None:
    """The exact value of a decimal number such as "-1,234.50" (thousands commas allowed); None otherwise."""
    if len(text) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
        return None
    return Fraction(text.replace(",", ""))


def last_number(text: str) -> Fraction | None:
    """The value of the last number written in `text` ("costs $1,200." gives 1200); None if there is none."""
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return None if last is None else parse_number(last[0])


def only_number(answer: str) -> Fraction | None:
    """The value of `answer` when it states one number and nothing else: after `format.unwrap`, an optional `$`
    or `\\$`, the number, then optionally `%`, `\\%`, a unit (`\\text{…}` or words) with no digit in it.
    "18", "$18.00", "\\boxed{1,000}", "3 apples" are numbers; "not 3", "7 3", "4^3", "3 or 5" are not (None)."""
    match = _ONLY_NUMBER.fullmatch(unwrap(answer))
    return None if match is None else parse_number(match["number"])


@reward_function("gsm8k")
def gsm8k(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """GSM8K for R1-style runs: 1.0 if the answer inside the only `<answer>…</answer>` is one number (see
    `only_number`) equal to the number `gold`, else 0.0 (also without the tag pair); None if `gold` is not a
    number."""
    expected = parse_number(gold.strip())
    if expected is None:
        return None
    answer = extract_answer(completion)
    return 1.0 if answer is not None and only_number(answer) == expected else 0.0


@reward_function("gsm8k_last_number")
def gsm8k_last_number(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """GSM8K for models without the R1 format (chat models), deliberately LENIENT and so gameable: 1.0 if the
    last number written in the answer tag, or in the whole completion when there is no tag pair, equals the
    number `gold` ("7 3" and "not 3" both read as 3). Use `gsm8k` for RL on models that can learn the format;
    None if `gold` is not a number."""
    expected = parse_number(gold.strip())
    if expected is None:
        return None
    answer = extract_answer(completion)
    return 1.0 if last_number(completion if answer is None else answer) == expected else 0.0


@reward_function("number_only")
def number_only(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """For chat models asked to "answer with just the number": 1.0 if the whole reply is one number (see
    `only_number`: "11", "11.", "$11", "11 apples") equal to the number `gold`, else 0.0 ("7+4=11" and "The
    answer is 11" score 0); None if `gold` is not a number. The strict counterpart of `gsm8k_last_number`, which
    finds the answer anywhere."""
    expected = parse_number(gold.strip())
    if expected is None:
        return None
    return 1.0 if only_number(completion) == expected else 0.0
