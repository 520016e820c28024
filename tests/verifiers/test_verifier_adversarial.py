"""Adversarial completions: every verifier returns a reward (or None) within a loose time bound, never raises."""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest

from rlreason.verifiers import get_reward_fn, score_texts
from rlreason.verifiers.golds import encode_golds
from rlreason.verifiers.tokens import exact_answer_tokens, format_reward_tokens, token_vocab


def _answer(text: str) -> str:
    return f"<think>t</think><answer>{text}</answer>"


NESTED_PARENTHESES = "(" * 10_000 + "1" + ")" * 10_000
ADVERSARIAL = {
    "100 kB of text": "x" * 100_000,
    "100 kB of thinking": "<think>" + "a " * 50_000 + "</think><answer>4</answer>",
    "100 kB of digits": _answer("1" * 100_000),
    "100 kB of commas and digits": _answer("1," * 50_000),
    "20,000 answer tags": "<answer>" * 20_000,
    "think think": "<think><think>",
    "nested answers": "<think>t</think><answer><answer>1</answer></answer>",
    "tags reversed": "</answer></think><think><answer>",
    "power tower": _answer("9**9**9**9"),
    "huge power": _answer("2**99999999"),
    "latex power tower": _answer("9^{9^{9^{9}}}"),
    "latex huge power": _answer("2^{99999999}"),
    "huge factorial": _answer("(10^{10})!"),
    "division by zero": _answer("1/0"),
    "division by zero expression": _answer("6 * 7 / (3 - 3) + 2"),
    "arabic-indic digits": _answer("١٢٣"),
    "full-width digits": _answer("１２３"),
    "NUL bytes": "\0" * 1000 + _answer("4\0") + "\0",
    "5,000-digit integer": _answer("9" * 5000),
    "nested parentheses x10000": _answer(NESTED_PARENTHESES),
    "nested parentheses under the cap": _answer("(" * 127 + "1" + ")" * 127),
    "nested fractions": _answer("\\frac{1}{" * 100 + "1" + "}" * 100),
    "nested roots": _answer("\\sqrt{" * 300 + "2" + "}" * 300),
    "unclosed latex": _answer("\\frac{\\sqrt{\\left(" * 50),
    "matrix power": _answer("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}^{99999}"),
    "lone surrogate": _answer("\ud800"),
}
CHEAP = ("r1_format", "exact_answer", "countdown", "gsm8k", "gsm8k_last_number")
METADATA = {"numbers": [6, 7, 3, 2], "target": 28}


@pytest.mark.parametrize("name", CHEAP)
def test_cheap_verifiers_return_quickly(name):
    reward = get_reward_fn(name)
    for label, completion in ADVERSARIAL.items():
        start = time.monotonic()
        value = reward("prompt", completion, "4", METADATA)
        assert time.monotonic() - start < 2.0, label
        assert value in (0.0, 0.1, 1.0), (label, value)
    assert reward("prompt", ADVERSARIAL["100 kB of thinking"], "4", METADATA) in (1.0, 0.1)  # long is not wrong


def test_cheap_verifiers_reject_what_they_must():
    for label in ("power tower", "huge power", "division by zero expression", "nested parentheses x10000",
                  "nested parentheses under the cap", "arabic-indic digits", "full-width digits"):
        assert get_reward_fn("countdown")("prompt", ADVERSARIAL[label], "", METADATA) == 0.1, label
    for name in ("exact_answer", "gsm8k"):
        assert get_reward_fn(name)("prompt", _answer("١٢٣"), "123", {}) == 0.0
        assert get_reward_fn(name)("prompt", _answer("１２３"), "123", {}) == 0.0
    assert get_reward_fn("exact_answer")("prompt", ADVERSARIAL["5,000-digit integer"], "9" * 5000, {}) == 1.0
    assert get_reward_fn("gsm8k")("prompt", ADVERSARIAL["5,000-digit integer"], "9" * 5000, {}) is None


def test_math_verifier_is_bounded_by_the_pool(pool):
    labels = list(ADVERSARIAL)
    start = time.monotonic()
    scores = score_texts([get_reward_fn("math_equiv")], ["prompt"] * len(labels), list(ADVERSARIAL.values()),
                         ["1"] * len(labels), [{}] * len(labels), pool, timeout_s=2.0)
    assert time.monotonic() - start < 45
    assert set(scores[:, 0].tolist()) == {0.0}
    # The pool still works after killing the workers that hung.
    assert score_texts([get_reward_fn("math_equiv")], ["prompt"], [_answer("0.5")], ["\\frac{1}{2}"], [{}],
                       pool, timeout_s=5.0).tolist() == [[1.0]]


def test_token_versions_take_any_ids(tokenizer):
    vocab = token_vocab(tokenizer)
    rng = np.random.default_rng(0)
    ids = rng.integers(-(2 ** 31), 2 ** 31 - 1, size=(8, 64), dtype=np.int64).astype(np.int32)
    ids[:, ::3] = rng.choice(np.asarray(vocab.tag_ids), size=ids[:, ::3].shape)
    mask = rng.random((8, 64)) < 0.9
    golds = encode_golds([("4", {})] * 8, 64)
    assert set(np.asarray(jax.jit(format_reward_tokens)(ids, mask, vocab)).tolist()) <= {0.0, 1.0}
    assert set(np.asarray(jax.jit(exact_answer_tokens)(ids, mask, golds, vocab)).tolist()) <= {0.0, 1.0}
