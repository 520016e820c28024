"""`make_scorer`: the host-callback bridge under jit and vmap, against direct calls of the text verifiers."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rlreason.config import RewardConfig
from rlreason.verifiers import WorkerPool, encode_golds, get_reward_fn, reward_function
from rlreason.verifiers.bridge import VerifierPoolError, detokenize, make_scorer, take_verifier_metrics

from token_rows import padded_rows

NAMES = ("r1_format", "exact_answer", "countdown", "gsm8k", "math_equiv", "test_prompt_echo")
PUZZLE = {"numbers": [6, 7, 3, 2], "target": 28}
PROMPTS = ["What is 12 + 30?", "Use 6 7 3 2 to make 28.", "Half of one?", "What is 0 + 0?"]
COMPLETIONS = [
    "<think> 12 + 30 = 42 </think> <answer> 42 </answer>",
    "<think>6 / 3 = 2</think>\n<answer>(6 / 3 + 2) * 7</answer>",
    "<answer>0.5</answer>",
    "",
]
GOLDS = [("42", {}), ("28", PUZZLE), ("\\frac{1}{2}", {}), ("0", {})]
NAN = float("nan")
EXPECTED = np.array([  # hand-computed, NAMES order
    [1.0, 1.0, NAN, 1.0, 1.0, len(PROMPTS[0])],
    [1.0, 0.0, 1.0, 0.0, 1.0, len(PROMPTS[1])],
    [0.0, 0.0, NAN, NAN, 1.0, len(PROMPTS[2])],
    [0.0, 0.0, NAN, 0.0, 0.0, len(PROMPTS[3])],
], np.float32)


@reward_function("test_prompt_echo")
def _prompt_echo(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """Shows the prompt text the host decoded (left padding must be dropped)."""
    return float(len(prompt))


def _batch(tokenizer):
    prompt_tokens, prompt_mask = padded_rows(tokenizer, PROMPTS, 32, left=True)
    completion_tokens, completion_mask = padded_rows(tokenizer, COMPLETIONS, 40, eos=True)
    completion_tokens[:, -3:] = tokenizer.encode("<answer>")[0]  # after EOS, outside the mask
    return prompt_tokens, prompt_mask, completion_tokens, completion_mask, encode_golds(GOLDS, max_bytes=96)


@pytest.fixture(scope="module")
def score(tokenizer, pool):
    return make_scorer(tokenizer, tuple(RewardConfig(name) for name in NAMES), timeout_s=5.0, pool=pool)


def test_scores_under_jit_match_hand_computed_and_direct_calls(tokenizer, score):
    batch = _batch(tokenizer)
    rewards = jax.jit(score)(*batch)
    assert rewards.shape == (len(PROMPTS), len(NAMES)) and rewards.dtype == np.float32
    np.testing.assert_array_equal(rewards, EXPECTED)
    prompt_tokens, prompt_mask, completion_tokens, completion_mask, _ = batch
    direct = [[get_reward_fn(name)(detokenize(tokenizer, prompt_tokens[row], prompt_mask[row]),
                                   detokenize(tokenizer, completion_tokens[row], completion_mask[row]), *GOLDS[row])
               for name in NAMES] for row in range(len(PROMPTS))]
    np.testing.assert_array_equal(rewards, np.array(direct, dtype=float).astype(np.float32))


def test_vmap_scores_each_batch(tokenizer, score):
    batch = _batch(tokenizer)
    flipped = tuple(array[::-1] for array in batch)
    stacked = tuple(np.stack(pair) for pair in zip(batch, flipped))
    rewards = jax.jit(jax.vmap(score))(*stacked)
    assert rewards.shape == (2, len(PROMPTS), len(NAMES))
    np.testing.assert_array_equal(rewards[0], EXPECTED)
    np.testing.assert_array_equal(rewards[1], EXPECTED[::-1])


def test_rows_without_gold_are_not_applicable(tokenizer, score):
    prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes = _batch(tokenizer)
    gold_bytes[1] = 0
    rewards = np.asarray(score(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes))
    assert np.isnan(rewards[1]).all()
    np.testing.assert_array_equal(np.delete(rewards, 1, axis=0), np.delete(EXPECTED, 1, axis=0))


def test_ids_outside_the_vocabulary_read_as_replacement_characters(tokenizer):
    ids = np.array(tokenizer.encode("<answer>4") + [tokenizer.vocab_size, tokenizer.vocab_size + 1]
                   + tokenizer.encode("2</answer>"))
    assert detokenize(tokenizer, ids, np.ones(len(ids), bool)) == "<answer>4\ufffd\ufffd2</answer>"


def test_unknown_reward_names_fail_before_compiling(tokenizer):
    with pytest.raises(ValueError, match="unknown reward function 'gsm8'"):
        make_scorer(tokenizer, (RewardConfig("gsm8"),), timeout_s=5.0)


def test_a_pool_that_cannot_start_stops_the_run_after_the_step(tokenizer):
    broken = WorkerPool(num_workers=1, spare_workers=0, preload=["rlreason.verifiers.no_such_module"])
    rewards = (RewardConfig("r1_format"), RewardConfig("math_equiv"))
    batch = _batch(tokenizer)
    try:
        deferred = jax.jit(make_scorer(tokenizer, rewards, timeout_s=5.0, pool=broken, raise_pool_errors=False))
        # The step completes, the isolated column scoring 0, so that every process reaches the check together.
        np.testing.assert_array_equal(deferred(*batch), np.stack([EXPECTED[:, 0], np.zeros(4, np.float32)], axis=1))
        with pytest.raises(VerifierPoolError, match=r"process\(es\) \[0\] could not start"):
            take_verifier_metrics()
        assert take_verifier_metrics() == {"verifier/timed_out_calls": 0.0, "verifier/killed_calls": 0.0}
        with pytest.raises(Exception, match="verifier worker processes in a row failed to start"):
            jax.block_until_ready(jax.jit(make_scorer(tokenizer, rewards, timeout_s=5.0, pool=broken))(*batch))
    finally:
        broken.close()
