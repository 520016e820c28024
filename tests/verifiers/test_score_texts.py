"""Scoring a batch of texts into the [B, K] reward matrix, inline and through the worker pool."""

from __future__ import annotations

import time

import numpy as np

from rlreason.verifiers import get_reward_fn, score_texts

NAN = float("nan")
NAMES = ("r1_format", "exact_answer", "countdown", "gsm8k", "math_equiv")
PUZZLE = {"numbers": [6, 7, 3, 2], "target": 28}
ROWS = [  # completion, gold, metadata, expected rewards in NAMES order
    ("<think>ok</think> <answer>28</answer>", "28", PUZZLE, [1.0, 1.0, 0.1, 1.0, 1.0]),
    ("<think>ok</think> <answer>(6 / 3 + 2) * 7</answer>", "28", PUZZLE, [1.0, 0.0, 1.0, 0.0, 1.0]),  # last number 7
    ("<answer>0.5</answer>", "\\frac{1}{2}", {}, [0.0, 0.0, NAN, NAN, 1.0]),
    ("I think 28", "28", {}, [0.0, 0.0, NAN, 0.0, 0.0]),
    ("<think>t</think><answer>9^{9^{9^{9}}}</answer>", "1", {}, [1.0, 0.0, NAN, 0.0, 0.0]),  # math times out
]


def test_batch_matrix_matches_hand_computed_rewards(pool):
    completions, golds, metadatas, expected = zip(*ROWS)
    start = time.monotonic()
    scores = score_texts([get_reward_fn(name) for name in NAMES], ["prompt"] * len(ROWS), completions, golds,
                         metadatas, pool, timeout_s=1.0)
    assert time.monotonic() - start < 15
    assert scores.dtype == np.float32 and scores.shape == (len(ROWS), len(NAMES))
    np.testing.assert_array_equal(scores, np.array(expected, np.float32))


def test_64_completions_score_fast_inline(pool):
    completions = [f"<think>{i} + {i} = {2 * i}</think>\n<answer>{2 * i}</answer>" for i in range(64)]
    golds = [str(2 * i if i % 2 else i) for i in range(64)]
    cheap = [get_reward_fn(name) for name in ("r1_format", "exact_answer", "countdown", "gsm8k")]
    start = time.perf_counter()
    scores = score_texts(cheap, ["prompt"] * 64, completions, golds, [{"numbers": [1, 2], "target": 3}] * 64,
                         pool, timeout_s=5.0)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"64 completions took {elapsed:.3f} s"
    odd = np.arange(64) % 2 == 1
    np.testing.assert_array_equal(scores[:, 0], 1.0)
    np.testing.assert_array_equal(scores[:, 1], np.where(odd | (np.arange(64) == 0), 1.0, 0.0))
    np.testing.assert_array_equal(scores[:, 2], np.float32(0.1))
    np.testing.assert_array_equal(scores[:, 1], scores[:, 3])


def test_math_for_64_completions_runs_in_the_pool(pool):
    completions = [f"<think>t</think><answer>\\frac{{{2 * i}}}{{2}}</answer>" for i in range(64)]
    start = time.perf_counter()
    scores = score_texts([get_reward_fn("math_equiv")], ["prompt"] * 64, completions, [str(i) for i in range(64)],
                         [{}] * 64, pool, timeout_s=5.0)
    assert time.perf_counter() - start < 20
    np.testing.assert_array_equal(scores, np.ones((64, 1), np.float32))
