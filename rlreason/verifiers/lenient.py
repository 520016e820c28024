"""Strict and lenient accuracy: did the model get the format and the answer, or the answer wherever it wrote it?

Strict accuracy is what the reward pays: the run's accuracy reward scores 1 (the answer inside `<answer>` for
the R1 tasks) and so does every format reward among the run's rewards (`r1_format`). Lenient accuracy counts an
answer that is right anywhere in the completion, in or out of the format: a base model can be more often right
outside the R1 format than inside it, and then a gain in strict accuracy may be the format alone. Format
compliance (`r1_format`) is reported on its own.

The lenient checks are registered reward functions, scored next to the rewards as metric-only columns (never in
the reward the advantages use):
  lenient_answer     the `<answer>` text, the last `\\boxed{…}` or the last number of the whole completion equals
                     the gold (as text after `canonical_answer`, or as numbers: "1,200" equals "1200.0")
  lenient_math       lenient_answer, or math-verify finds the gold in the whole completion (isolated: sympy)
  lenient_countdown  the `<answer>` text or any arithmetic expression written in the completion reaches the
                     target with every given number once

`accuracy_functions`, `metric_only_functions` and `verdicts` are the one place that says which functions'
columns make each accuracy; training metrics and evaluation both call them. Their array code uses only
comparisons and `&`, so it runs on numpy arrays (evaluation) and inside a jitted step alike. No JAX import here:
worker processes import this module for `lenient_math`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from math_verify import parse, verify

from rlreason.verifiers.answers import canonical_answer, last_number, parse_number
from rlreason.verifiers.base import reward_function
from rlreason.verifiers.countdown import countdown, evaluate_expression
from rlreason.verifiers.format import extract_answer
from rlreason.verifiers.math import parse_latex

FORMAT_COMPLIANCE = "r1_format"  # the function whose score is reported as format compliance
FORMAT_REWARDS = ("r1_format",)  # functions that, among a run's rewards, strict accuracy requires
# The lenient version of each accuracy reward; an accuracy reward not listed is its own lenient version.
LENIENT_VERSIONS = {"exact_answer": "lenient_answer", "gsm8k": "lenient_answer",
                    "gsm8k_last_number": "lenient_answer", "number_only": "lenient_answer", "math_equiv": "lenient_math",
                    "countdown": "lenient_countdown"}

BOXED = "\\boxed{"
MAX_BOXED_CHARS = 1000
MAX_MATH_COMPLETION_CHARS = 20_000  # math-verify reads the whole completion; sympy time grows with it
MAX_EXPRESSIONS = 32  # countdown: the last this many expressions of a completion are tried
_EXPRESSION_RUN = re.compile(r"[0-9+\-*/() ]+")
_OPERATOR = re.compile(r"[0-9)]\s*[+\-*/]")


def last_boxed(text: str) -> str | None:
    """The contents of the last `\\boxed{…}` in `text`, braces balanced; None if there is none or it is not
    closed within `MAX_BOXED_CHARS` characters."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(BOXED)
    for end in range(begin, min(len(text), begin + MAX_BOXED_CHARS)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[begin:end]
    return None


def lenient_answer_text(completion: str) -> str | None:
    """The answer a reader would take from `completion`: the `<answer>` text, else the last boxed expression, else
    the last number as written; None if there is none of these (for majority votes over lenient answers)."""
    for candidate in (extract_answer(completion), last_boxed(completion)):
        if candidate is not None:
            return canonical_answer(candidate)
    value = last_number(completion)
    return None if value is None else str(value)


def _same_answer(candidate: str | None, gold: str) -> bool:
    if candidate is None:
        return False
    if canonical_answer(candidate) == canonical_answer(gold):
        return True
    expected = parse_number(gold.strip())
    return expected is not None and parse_number(candidate.strip()) == expected


@reward_function("lenient_answer")
def lenient_answer(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """1.0 if the `<answer>` text, the last boxed expression or the last number of `completion` equals `gold`,
    else 0.0; None when `gold` is empty."""
    if not canonical_answer(gold):
        return None
    expected_number = parse_number(gold.strip())
    right = (_same_answer(extract_answer(completion), gold) or _same_answer(last_boxed(completion), gold)
             or (expected_number is not None and last_number(completion) == expected_number))
    return 1.0 if right else 0.0


@reward_function("lenient_math", isolated=True)
def lenient_math(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """1.0 if `lenient_answer` finds the gold, or math-verify finds the `<answer>` text or its extraction from the
    whole completion (the last boxed or LaTeX expression, else the last plain expression) mathematically equal to
    it; else 0.0. None when
    neither can read `gold`. Completions longer than `MAX_MATH_COMPLETION_CHARS` get the first check only."""
    plain = lenient_answer(prompt, completion, gold, metadata)
    if plain == 1.0:
        return plain
    expected = parse_latex(gold)
    if not expected:
        return plain
    if len(completion) > MAX_MATH_COMPLETION_CHARS:
        return 0.0
    answer = extract_answer(completion)
    candidates = ([parse_latex(answer)] if answer is not None else []) + [parse(completion, parsing_timeout=None)]
    return 1.0 if any(found and verify(expected, found, timeout_seconds=None) for found in candidates) else 0.0


@reward_function("lenient_countdown")
def lenient_countdown(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """1.0 if the `<answer>` text, or one of the last `MAX_EXPRESSIONS` arithmetic expressions written anywhere in
    `completion` ("so (3+5)*2 = 16"), uses every given number once and equals the target; else 0.0. None when
    `metadata` lacks the puzzle (as for `countdown`)."""
    strict = countdown(prompt, completion, gold, metadata)
    if strict is None or strict == 1.0:
        return strict
    expressions = [run.strip() for run in _EXPRESSION_RUN.findall(completion) if _OPERATOR.search(run)]
    numbers = Counter(metadata["numbers"])
    for expression in expressions[-MAX_EXPRESSIONS:]:
        evaluated = evaluate_expression(expression)
        if evaluated is not None and evaluated[0] == metadata["target"] and Counter(evaluated[1]) == numbers:
            return 1.0
    return 0.0


def lenient_version(accuracy_reward: str) -> str:
    """The lenient function for `accuracy_reward`: its entry in LENIENT_VERSIONS, else itself."""
    return LENIENT_VERSIONS.get(accuracy_reward, accuracy_reward)


def accuracy_functions(accuracy_reward: str) -> tuple[str, ...]:
    """The functions the accuracy views read, without repeats: format compliance, the accuracy reward, its
    lenient version."""
    return tuple(dict.fromkeys((FORMAT_COMPLIANCE, accuracy_reward, lenient_version(accuracy_reward))))


def metric_only_functions(reward_names: Sequence[str], accuracy_reward: str) -> tuple[str, ...]:
    """The accuracy functions a run must score besides its rewards `reward_names`: columns that feed the metrics
    and never the reward."""
    return tuple(name for name in accuracy_functions(accuracy_reward) if name not in reward_names)


def verdicts(scores, columns: Sequence[str], reward_names: Sequence[str], accuracy_reward: str) -> dict:
    """Per-row bool arrays [B] from per-function scores [B, len(columns)] (numpy or JAX; NaN counts as wrong):
    `answer` the accuracy reward alone is 1, `strict` also every format reward among `reward_names` is 1,
    `lenient` the lenient version or the accuracy reward is 1 (so lenient >= answer >= strict, row by row;
    absent when `columns` lacks the lenient version, as in a step scored on tokens), `format` format compliance
    is 1.

    Raises ValueError naming the format-compliance or accuracy function if `columns` lacks it.
    """
    missing = [name for name in (FORMAT_COMPLIANCE, accuracy_reward) if name not in columns]
    if missing:
        raise ValueError(f"the scores have no column for {', '.join(missing)} (columns: {', '.join(columns)}); "
                         f"score the functions of accuracy_functions({accuracy_reward!r}) too")
    passed = {name: scores[:, columns.index(name)] >= 1.0 for name in columns}
    strict = passed[accuracy_reward]
    for name in reward_names:
        if name in FORMAT_REWARDS:
            strict = strict & passed[name]
    result = {"answer": passed[accuracy_reward], "strict": strict, "format": passed[FORMAT_COMPLIANCE]}
    if lenient_version(accuracy_reward) in passed:
        result["lenient"] = passed[lenient_version(accuracy_reward)] | passed[accuracy_reward]
    return result
