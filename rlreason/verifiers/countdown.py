"""Countdown (TinyZero): reach `target` with an arithmetic expression over the given `numbers`.

Rules, following TinyZero: the expression must use every given number exactly once (as a multiset), only
binary + - * / and parentheses, no other literals, no unary minus, no `=`. Reward 1.0 when it evaluates
exactly (Fractions, so 7/2*2 is 7) to the target; 0.1 when there is an answer but it is wrong in any way
(not an expression, wrong numbers, division by zero, wrong value); 0.0 when there is no `<answer>…</answer>`.

The expression is parsed with `ast` and evaluated by walking the tree, never with `eval`. Its text is capped at
`MAX_EXPRESSION_CHARS` and restricted to ASCII digits, operators, parentheses and spaces before parsing, so the
tree is small and every intermediate value is a rational built from at most a handful of given numbers.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from fractions import Fraction

from rlreason.verifiers.base import reward_function
from rlreason.verifiers.format import extract_answer

MAX_EXPRESSION_CHARS = 256
CORRECT, WRONG, NO_ANSWER = 1.0, 0.1, 0.0

_EXPRESSION_CHARS = re.compile(r"[0-9+\-*/() \t\n\r]*")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class _NotAllowed(Exception):
    """The expression uses something other than integer literals and + - * /."""


def _evaluate(node: ast.AST, literals: list[int]) -> Fraction:
    """The exact value of `node`; appends each integer literal met to `literals`."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left, literals), _evaluate(node.right, literals)
        return _OPERATORS[type(node.op)](left, right)
    raise _NotAllowed(type(node).__name__)


def evaluate_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """(value, integer literals in order of appearance) of an arithmetic expression; None if `text` is not
    one, is longer than `MAX_EXPRESSION_CHARS`, or divides by zero."""
    if len(text) > MAX_EXPRESSION_CHARS or not _EXPRESSION_CHARS.fullmatch(text):
        return None
    literals: list[int] = []
    try:
        tree = ast.parse(text.strip(), mode="eval")
        return _evaluate(tree.body, literals), literals
    except (SyntaxError, ValueError, RecursionError, MemoryError, ZeroDivisionError, _NotAllowed):
        return None


def _countdown_puzzle(metadata: dict) -> tuple[list[int], int] | None:
    numbers, target = metadata.get("numbers"), metadata.get("target")
    if not isinstance(numbers, list) or not all(type(n) is int for n in numbers) or type(target) is not int:
        return None
    return numbers, target


@reward_function("countdown")
def countdown(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """1.0 / 0.1 / 0.0 as described in the module docstring; None when `metadata` lacks an integer `target`
    or a list of integer `numbers`."""
    puzzle = _countdown_puzzle(metadata)
    if puzzle is None:
        return None
    numbers, target = puzzle
    answer = extract_answer(completion)
    if answer is None:
        return NO_ANSWER
    evaluated = evaluate_expression(answer)
    if evaluated is None:
        return WRONG
    value, literals = evaluated
    return CORRECT if value == target and Counter(literals) == Counter(numbers) else WRONG
