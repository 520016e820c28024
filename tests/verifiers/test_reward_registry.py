"""The reward-function contract: registry, never-raising calls, and the weighted combination."""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
import pytest

from rlreason.verifiers import REWARD_FUNCTIONS, get_reward_fn, reward_function
from rlreason.verifiers.base import call_reward
from rlreason.verifiers.combine import combine_rewards, reward_metrics

NAN = float("nan")


def test_builtin_functions_are_registered_with_their_isolation():
    builtin = {"r1_format", "exact_answer", "countdown", "gsm8k", "gsm8k_last_number", "number_only", "math_equiv"}
    assert builtin <= set(REWARD_FUNCTIONS)
    assert get_reward_fn("math_equiv").isolated
    assert not any(get_reward_fn(name).isolated for name in ("r1_format", "exact_answer", "countdown", "gsm8k"))


def test_registered_function_is_called_with_the_contract_signature():
    formatted = "<think>a</think><answer>7</answer>"
    assert get_reward_fn("exact_answer")("prompt", formatted, "7", {}) == 1.0
    assert get_reward_fn("exact_answer")("prompt", formatted, "8", {}) == 0.0


def test_unknown_name_is_rejected_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown reward function 'r1_formt' \(did you mean 'r1_format'\?\).*gsm8k"):
        get_reward_fn("r1_formt")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="'r1_format' is already registered"):
        reward_function("r1_format")(lambda prompt, completion, gold, metadata: 1.0)


def _raises(prompt, completion, gold, metadata):
    raise KeyError("boom")


def test_call_reward_turns_none_into_nan_and_errors_into_zero(caplog):
    assert math.isnan(call_reward("none", lambda *row: None, "", "", "", {}))
    assert call_reward("bool", lambda *row: True, "", "", "", {}) == 1.0
    with caplog.at_level(logging.ERROR, logger="rlreason.verifiers"):
        assert call_reward("raises", _raises, "", "completion", "", {}) == 0.0
    assert "'raises' raised" in caplog.text and "KeyError" in caplog.text


PER_FUNCTION = np.array([[1.0, NAN, 0.5],
                         [NAN, NAN, NAN],
                         [0.0, 1.0, NAN],
                         [0.1, 0.0, 1.0]], np.float32)
WEIGHTS = (1.0, 2.0, 4.0)


def test_combine_skips_not_applicable_terms_and_gives_nan_when_none_applies():
    expected = np.array([1.0 + 4 * 0.5, NAN, 2.0, 0.1 + 4.0], np.float32)
    np.testing.assert_allclose(combine_rewards(PER_FUNCTION, WEIGHTS), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(combine_rewards)(PER_FUNCTION, np.array(WEIGHTS)), expected, rtol=1e-6)


def test_metrics_average_each_function_over_the_rows_it_applies_to():
    metrics = reward_metrics(PER_FUNCTION, ("r1_format", "exact_answer", "math_equiv"))
    assert list(metrics) == ["rewards/r1_format", "rewards/exact_answer", "rewards/math_equiv"]
    np.testing.assert_allclose([metrics[key] for key in metrics], [1.1 / 3, 0.5, 0.75], rtol=1e-6)
    assert math.isnan(reward_metrics(np.full((2, 1), NAN, np.float32), ("countdown",))["rewards/countdown"])
