"""Preemption (SIGTERM) and the per-step vote by which every process of a run takes the same decision.

Cloud TPU maintenance events, Kubernetes evictions and Slurm send SIGTERM some seconds before they kill a job.
`SigtermListener` only notes it; the training loop finishes the step it is in, saves a checkpoint and exits.

In a multi-process run every process must save at the same step (orbax saves are collective), but SIGTERM may
reach the hosts at different moments, or only some of them, and "every T seconds" is measured by each host's
own clock. So after each step the processes vote with `any_process`: one all-gather of a few booleans, one byte
each per process, which costs next to nothing beside a step of seconds. A single process skips the vote.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class SigtermListener:
    """Context manager: while inside, SIGTERM sets `requested` instead of ending the process.

    Must be entered on the main thread (Python runs signal handlers there). On exit the previous handler is
    restored, so a SIGTERM after the loop ends the process as usual.
    """

    def __init__(self):
        self._requested = threading.Event()
        self._previous = None

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def __enter__(self) -> SigtermListener:
        self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._requested.set())
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def any_process(flags: list[bool]) -> list[bool]:
    """For each flag, whether it is set on any process of the run. Every process must call this at the same
    point with the same number of flags (it is a collective)."""
    if jax.process_count() == 1:
        return list(flags)
    votes = multihost_utils.process_allgather(np.asarray(flags, np.bool_))  # [processes, len(flags)]
    return np.any(votes, axis=0).tolist()
