"""Test helper: an isolated reward function that misbehaves as its completion says, for the worker-pool tests.

Worker processes import it by name, so the tests that use it put this directory on the workers' PYTHONPATH.
"""

from __future__ import annotations

import os
import time

from rlreason.verifiers import reward_function

ALLOCATED_BYTES = 2 ** 31  # far above any memory limit the tests set, written so that it is really resident


@reward_function("stress", isolated=True)
def stress(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """`sleep`: never returns; `spin`: burns CPU forever; `allocate`: fills 2 GiB; `crash`: the process exits;
    anything else: 1.0."""
    if completion == "sleep":
        time.sleep(3600)
    if completion == "spin":
        while True:
            pass
    if completion == "allocate":
        return float(len(b"x" * ALLOCATED_BYTES))
    if completion == "crash":
        os._exit(1)
    return 1.0


@reward_function("stress_crash", isolated=True)
def stress_crash(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """Every call kills its worker process."""
    os._exit(1)
