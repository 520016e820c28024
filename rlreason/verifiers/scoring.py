"""Scoring a batch of texts with several reward functions into a [B, K] matrix (NaN: not applicable).

Cheap functions run inline (their input handling is linear-time or capped); isolated ones (sympy) run in the
time-bounded worker pool. Nothing a completion contains can make this raise.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rlreason.verifiers.base import RewardFunction, call_reward
from rlreason.verifiers.isolation import WorkerPool, WorkerStartError

# What an isolated call that timed out, was cut by the batch deadline or crashed scores: an answer that cannot
# be verified in time is wrong.
FAILED_CALL_REWARD = 0.0


def score_texts(reward_fns: Sequence[RewardFunction], prompts: Sequence[str], completions: Sequence[str],
                golds: Sequence[str], metadatas: Sequence[dict], pool: WorkerPool, timeout_s: float,
                deadline_s: float = math.inf, pool_errors: list[str] | None = None) -> np.ndarray:
    """Rewards [B, K] float32 of B rows under K functions; NaN where a function returned None.

    `pool` runs the isolated functions, each call limited to `timeout_s` seconds and all of them to `deadline_s`
    seconds (a call unfinished by then scores FAILED_CALL_REWARD and is counted by the pool); it starts no
    process unless one of `reward_fns` is isolated. A pool whose workers cannot start raises WorkerStartError,
    unless `pool_errors` is given: then its message is appended there and the isolated cells score
    FAILED_CALL_REWARD (the inline ones are kept).
    """
    rows = list(zip(prompts, completions, golds, metadatas, strict=True))
    scores = np.full((len(rows), len(reward_fns)), np.nan, np.float32)
    isolated_cells, isolated_calls = [], []
    for k, reward in enumerate(reward_fns):
        for b, row in enumerate(rows):
            if reward.isolated:
                isolated_cells.append((b, k))
                isolated_calls.append((call_reward, (reward.name, reward.fn, *row)))
            else:
                scores[b, k] = call_reward(reward.name, reward.fn, *row)
    if isolated_calls:
        try:
            values = pool.run(isolated_calls, timeout_s, on_failure=FAILED_CALL_REWARD, deadline_s=deadline_s)
        except WorkerStartError as error:
            if pool_errors is None:
                raise
            pool_errors.append(str(error))
            values = [FAILED_CALL_REWARD] * len(isolated_calls)
        for (b, k), value in zip(isolated_cells, values):
            scores[b, k] = value
    return scores
