"""Mathematical equivalence through math-verify (sympy): "0.5" equals "\\frac{1}{2}", "x^2+2x+1" equals "(x+1)^2".

Before math-verify sees an answer, two cheap screens run (linear scans, no sympy):
- `input_problem`: inputs that would make sympy slow or large, however they compare: too long, nested too
  deep, exponent towers of numbers (`9^{9^{9}}`, `5^4^6`; `e^{x^2}` is fine), an exponent over `MAX_EXPONENT`
  (`(x+1)^{1000000}`), factorials, binomials and Gamma of anything but small integers, macro definitions,
  control characters.
- `shape_problem`: answers that are not one expression. math-verify reads the right-hand side of a relation,
  the last of several math environments or boxes, and whatever its parser can recover from a string it cannot
  parse (`5 \\sim 3`, `5 \\\\ 3`, `2 1` all read as 3). RL finds such readings, so an answer must be one
  expression (wrappers that hold all of it, such as `$…$` or `\\boxed{…}`, are removed by `format.unwrap`),
  written with the characters and LaTeX commands of `ALLOWED_COMMANDS`, with no two numbers side by side.
  After parsing, it must not be a relation or a logical combination, except `symbol = value` (`x = 3`); when
  the gold answer is itself a relation, relations are compared by math-verify.
Either screen scores the answer 0.0. The screens are a first line; the worker pool's time and memory limits
(see `isolation`) bound whatever passes them.

math-verify's own timeouts use `signal.alarm`, which fails outside the main thread (XLA callback threads), so
they are switched off; this function is registered as isolated: it runs in a worker process (see `isolation`).
"""

from __future__ import annotations

import logging
import re

from math_verify import parse, verify
from sympy import Basic, Symbol
from sympy.core.relational import Equality, Relational
from sympy.logic.boolalg import BooleanAtom, BooleanFunction

from rlreason.verifiers.base import reward_function
from rlreason.verifiers.format import extract_answer, unwrap

MAX_MATH_ANSWER_CHARS = 1000
MAX_NESTING_DEPTH = 10  # brackets and braces; legitimate answers stay far below
MAX_EXPONENT = 1000  # bound on the product of the integers in one exponent
MAX_FACTORIAL = 1000

ALLOWED_COMMANDS = frozenset("""
    frac dfrac tfrac cfrac sqrt cdot times div pm mp left right infty text textbf textit textrm mathrm mathbf mathit
    operatorname displaystyle sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp lg circ degree
    le ge leq geq lt gt neq ne in notin cup cap setminus emptyset varnothing binom dbinom tbinom overline bar hat
    lfloor rfloor lceil rceil langle rangle prime mathbb begin end
    alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi pi varpi rho sigma
    tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega
    % { } | , ; : ! quad qquad
""".split())
_ALLOWED_CHARS = re.compile(r"[A-Za-z0-9\s+\-*/^_.,;:()\[\]{}|!'=<>%&\\]*")
_COMMAND = re.compile(r"\\([A-Za-z]+|.)")
_SPACING = re.compile(r"\\(?:[,;:! ]|q?quad(?![A-Za-z]))")
_MATRIX_ENVIRONMENT = re.compile(r"\\(?:begin|end)\{([A-Za-z]*)\}")
_MATRICES = frozenset({"matrix", "pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix"})
_ADJACENT_NUMBERS = re.compile(r"(?:^|[^_0-9.])[0-9.]+\s+[0-9.]")  # not a subscript's: \log_2 8
_TEXT_WITH_DIGIT = re.compile(r"\\text[a-z]*\s*\{[^{}]*[0-9]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_MACRO = re.compile(r"\\(?:def|edef|gdef|xdef|let|newcommand|renewcommand|providecommand|DeclareMathOperator)"
                    r"(?![A-Za-z])")
_POWER = re.compile(r"\^\s*")
_NUMERIC_POWER = re.compile(r"[0-9]\s*\^\s*\{?\s*[0-9]")  # 9^9, 9^{9}: inside an exponent, a tower of numbers
_CHAINED_POWER = re.compile(r"\^\s*(?:\{[^{}]*\}|[0-9]+|[A-Za-z])\s*\^")  # a^b^c, a^{b}^{c}
_COMBINATORIAL = re.compile(r"\\(?:[dt]?binom|choose|Gamma)(?![A-Za-z])")
_DIGITS = re.compile(r"[0-9]+")
_FACTORIAL = re.compile(r"([0-9]*)(\s*)([)}\]]?)\s*!")


def _is_not_timeout_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Timeout is disabled")


# math-verify warns once per process that its timeouts are off; here that is by design, and every restarted
# worker process would repeat it.
for _module in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_module).addFilter(_is_not_timeout_notice)


def _group_end(text: str, start: int) -> int:
    """The index just past the brace group opening at text[start] ("{"); -1 if it is not closed."""
    depth = 0
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return index + 1
    return -1


def _exponent(text: str, start: int) -> str:
    """The exponent written at text[start:] (after `^` and spaces): a brace group, a digit run or one symbol."""
    if text.startswith("{", start):
        end = _group_end(text, start)
        return text[start + 1:end - 1] if end > 0 else text[start:]
    digits = _DIGITS.match(text, start)
    return digits[0] if digits else text[start:start + 1]


def _integer_product_exceeds(text: str, bound: int) -> bool:
    product = 1
    for digits in _DIGITS.findall(text):
        if len(digits) > len(str(bound)):
            return True
        product *= max(int(digits), 1)
        if product > bound:
            return True
    return False


def input_problem(answer: str) -> str | None:
    """Why math-verify must not see `answer` (an input that makes sympy slow or large), or None."""
    if len(answer) > MAX_MATH_ANSWER_CHARS:
        return f"longer than {MAX_MATH_ANSWER_CHARS} characters"
    if _CONTROL.search(answer):
        return "a control character"
    if _MACRO.search(answer):
        return "a macro definition"
    depth = max_depth = 0
    for char in answer:
        depth += 1 if char in "([{" else -1 if char in ")]}" else 0
        max_depth = max(max_depth, depth)
    if max_depth > MAX_NESTING_DEPTH:
        return f"nested deeper than {MAX_NESTING_DEPTH}"
    if "**" in answer:
        return "a `**` power"
    for power in _POWER.finditer(answer):
        exponent = _exponent(answer, power.end())
        if _NUMERIC_POWER.search(exponent):
            return "an exponent tower"
        if _integer_product_exceeds(exponent, MAX_EXPONENT):
            return f"an exponent over {MAX_EXPONENT}"
    if _CHAINED_POWER.search(answer):
        return "an exponent tower"
    for factorial in _FACTORIAL.finditer(answer):
        if factorial[3] or not factorial[1] or _integer_product_exceeds(factorial[1], MAX_FACTORIAL):
            return f"a factorial of something other than an integer up to {MAX_FACTORIAL}"
    if _COMBINATORIAL.search(answer) and any(len(digits) > 4 or int(digits) > MAX_FACTORIAL
                                              for digits in _DIGITS.findall(answer)):
        return f"a binomial or Gamma function with a number over {MAX_FACTORIAL}"
    return None


def shape_problem(answer: str) -> str | None:
    """Why the unwrapped `answer` is not written as one expression, or None (see the module docstring)."""
    if not _ALLOWED_CHARS.fullmatch(answer):
        return "a character outside the expression alphabet"
    if "\n" in answer:
        return "more than one line"
    for command in _COMMAND.findall(answer):
        if command not in ALLOWED_COMMANDS and command != "\\":
            return f"the command \\{command}"
    environments = set(_MATRIX_ENVIRONMENT.findall(answer))
    if not environments <= _MATRICES:
        return f"the environment(s) {sorted(environments - _MATRICES)}"
    if ("\\\\" in answer or "&" in answer) and not environments:
        return "a line break or `&` outside a matrix"
    if _TEXT_WITH_DIGIT.search(answer):
        return "a number inside \\text"
    if _ADJACENT_NUMBERS.search(_SPACING.sub(" ", answer)):
        return "two numbers side by side"
    return None


def _is_relation(expr) -> bool:
    """True for a relation, a chain of them, or a logical combination, also inside a set or tuple."""
    kinds = (Relational, BooleanFunction, BooleanAtom)
    return isinstance(expr, Basic) and (isinstance(expr, kinds) or any(expr.has(kind) for kind in kinds))


def _is_one_value(expr) -> bool:
    """True unless `expr` is a relation other than `symbol = value`."""
    if isinstance(expr, Equality) and isinstance(expr.lhs, Symbol):
        expr = expr.rhs
    return not _is_relation(expr)


def parse_latex(text: str) -> list:
    """math-verify's candidate parses of `text`, read as LaTeX math: wrapped in `$…$` unless it holds a `$`
    already (a bare "x^2+2x+1" is not extracted at all, and a bare "2^{1/2}" is misread as 2)."""
    return parse(text if "$" in text else f"${text}$", parsing_timeout=None)


_WARM_UP = (("\\frac{x^2}{2}", "x^2/2"), ("2^{3}", "9"), ("\\{1, \\sqrt{2}\\}", "0.5"))


def warm_up() -> None:
    """A few comparisons, run by each worker process at start (see `isolation.serve`): math-verify and sympy
    set up their parser and numeric paths on first use, which takes about a second, longer than a call should."""
    for answer, gold in _WARM_UP:
        math_equiv("", f"<answer>{answer}</answer>", gold, {})


@reward_function("math_equiv", isolated=True)
def math_equiv(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """1.0 if the answer inside the only `<answer>…</answer>` is one expression mathematically equal to `gold`,
    else 0.0 (also without the tag pair, or for an answer a screen rejects: see the module docstring); None if
    math-verify cannot parse `gold`. Floats are rounded to 6 digits by math-verify, so 0.333333 equals 1/3."""
    expected = parse_latex(gold)
    if not expected:
        return None
    answer = extract_answer(completion)
    if answer is None or input_problem(answer) is not None:
        return 0.0
    answer = unwrap(answer)
    if shape_problem(answer) is not None:
        return 0.0
    parsed = parse_latex(answer)
    if not parsed or (not _is_relation(expected[0]) and not _is_one_value(parsed[0])):
        return 0.0
    return 1.0 if verify(expected, parsed, timeout_seconds=None) else 0.0
