"""Mathematical equivalence through math-verify (sympy): "0.5" equals "\\frac{1}{2}", "x^2+2x+1" equals "(x+1)^2".

math-verify's own timeouts use `signal.alarm`, which fails outside the main thread (XLA callback threads), so
they are switched off; sympy can still take unbounded time (`9^{9^{9}}`), which is why this function is
registered as isolated: it runs in a worker process that is killed at the time limit (see `isolation`).
"""

from __future__ import annotations

import logging

from math_verify import parse, verify

from rlreason.verifiers.base import reward_function
from rlreason.verifiers.format import extract_answer

MAX_MATH_ANSWER_CHARS = 1000


def _is_not_timeout_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Timeout is disabled")


# math-verify warns once per process that its timeouts are off; here that is by design, and every restarted
# worker process would repeat it.
for _module in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_module).addFilter(_is_not_timeout_notice)


def parse_latex(text: str) -> list:
    """math-verify's candidate parses of `text`, read as LaTeX math: wrapped in `$…$` unless it holds a `$`
    already (a bare "x^2+2x+1" is not extracted at all, and a bare "2^{1/2}" is misread as 2)."""
    return parse(text if "$" in text else f"${text}$", parsing_timeout=None)


@reward_function("math_equiv", isolated=True)
def math_equiv(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """1.0 if the answer inside the only `<answer>…</answer>` is mathematically equal to `gold`, else 0.0
    (also without the tag pair, or with an answer longer than `MAX_MATH_ANSWER_CHARS`); None if math-verify
    cannot parse `gold`. Floats are rounded to 6 digits by math-verify, so 0.333333 equals 1/3."""
    expected = parse_latex(gold)
    if not expected:
        return None
    answer = extract_answer(completion)
    if answer is None or len(answer) > MAX_MATH_ANSWER_CHARS:
        return 0.0
    return 1.0 if verify(expected, parse_latex(answer), timeout_seconds=None) else 0.0
