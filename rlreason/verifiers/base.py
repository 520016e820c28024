"""The reward-function contract and the registry that maps config names to functions.

A reward function is `fn(prompt, completion, gold, metadata) -> float | None`: `gold` is the reference answer
string, `metadata` the task's extra fields (e.g. countdown's numbers and target), and None means "this function
cannot score this row" (it becomes NaN in the per-function reward matrix and is left out of the weighted sum).

This module imports no JAX: worker processes that run slow verifiers import it too.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from typing import Callable

RewardFn = Callable[[str, str, str, dict], float | None]

logger = logging.getLogger("rlreason.verifiers")


@dataclasses.dataclass(frozen=True)
class RewardFunction:
    """A registered reward function.

    `isolated` marks functions whose running time cannot be bounded by capping their input (sympy through
    math-verify): they run in a worker process that is killed when it exceeds the time limit.
    """

    name: str
    fn: RewardFn
    isolated: bool = False

    def __call__(self, prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
        return self.fn(prompt, completion, gold, metadata)


REWARD_FUNCTIONS: dict[str, RewardFunction] = {}


def reward_function(name: str, *, isolated: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering `fn` under `name`; returns `fn` itself, so it stays picklable by reference.

    Isolated functions must live in an importable module (not `__main__`): worker processes import it.
    """

    def register(fn: RewardFn) -> RewardFn:
        if name in REWARD_FUNCTIONS and REWARD_FUNCTIONS[name].fn is not fn:
            raise ValueError(f"reward function {name!r} is already registered "
                             f"(by {REWARD_FUNCTIONS[name].fn.__module__})")
        REWARD_FUNCTIONS[name] = RewardFunction(name, fn, isolated)
        return fn

    return register


def get_reward_fn(name: str) -> RewardFunction:
    """The registered reward function called `name`; raises a ValueError listing the known names otherwise."""
    if name not in REWARD_FUNCTIONS:
        close = difflib.get_close_matches(name, list(REWARD_FUNCTIONS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown reward function {name!r}{hint}; registered: {', '.join(sorted(REWARD_FUNCTIONS))}")
    return REWARD_FUNCTIONS[name]


def call_reward(name: str, fn: RewardFn, prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """Runs one reward function and never raises: None becomes NaN, an exception is logged and scores 0.

    An exception is a verifier bug or an input it failed to reject; the completion is scored as wrong rather
    than stopping a training step that may hold thousands of other completions. MemoryError is the exception:
    it propagates, so that a worker process that reached its memory limit exits (see `isolation.serve`).
    """
    try:
        value = fn(prompt, completion, gold, metadata)
        return math.nan if value is None else float(value)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - the contract is that no verifier error escapes
        logger.exception("reward function %r raised on a completion of %d chars; scored 0", name, len(completion))
        return 0.0
