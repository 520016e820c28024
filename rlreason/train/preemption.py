"""Stop signals (SIGTERM, SIGINT) and the per-step vote by which every process of a run takes the same decision.

Cloud TPU maintenance events, Kubernetes evictions and Slurm send SIGTERM some seconds before they kill a job;
Ctrl-C at a terminal sends SIGINT. `StopSignals` only notes the first one; the training loop finishes the step
it is in, saves a checkpoint and exits. A second SIGINT ends the process at once (exit 130), without saving:
the checkpoints already on disk are intact, and a save cut short leaves only a temporary directory that the
next run removes.

The signals are watched by a thread reading the interpreter's wakeup file descriptor (`signal.set_wakeup_fd`),
on which CPython writes each signal's number the moment it arrives. A Python signal handler runs only on the
main thread between bytecodes, so not while a compiled step runs; the thread sees a second Ctrl-C even then.

In a multi-process run every process must save at the same step (orbax saves are collective), but a signal may
reach the hosts at different moments, or only some of them, and "every T seconds" is measured by each host's
own clock. So after each step the processes vote with `any_process`: one all-gather of a few booleans, one byte
each per process, which costs next to nothing beside a step of seconds. A single process skips the vote.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
ABORTED_EXIT_CODE = 128 + signal.SIGINT  # as a shell reports a process ended by SIGINT


class StopSignals:
    """Context manager: while inside, SIGTERM or SIGINT sets `received` (the first signal's name) instead of
    ending the process, and a second SIGINT exits at once with ABORTED_EXIT_CODE.

    Must be entered on the main thread (Python installs signal handlers there). On exit the previous handlers
    are restored, so a signal after the loop acts as usual.
    """

    def __init__(self):
        self.received: str | None = None
        self._previous_handlers: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._reader = self._writer = None
        self._watcher: threading.Thread | None = None

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignals:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        for signum in STOP_SIGNALS:
            # The handler itself does nothing: the watcher thread acts on the signal (see the module docstring).
            self._previous_handlers[signum] = signal.signal(signum, lambda signum, frame: None)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="rlreason-stop-signals", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        while data := self._reader.recv(64):  # empty once __exit__ closes the writing end
            for signum in data:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        if signum not in STOP_SIGNALS:
            return
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            hint = "; press Ctrl-C again to abort at once, without saving" if signum == signal.SIGINT else ""
            print(f"\n{name} received: stopping after the step in progress, then saving a checkpoint{hint}",
                  file=sys.stderr, flush=True)
        elif signum == signal.SIGINT:
            print("\nSIGINT received again: aborted without saving (the checkpoints already saved are intact)",
                  file=sys.stderr, flush=True)
            os._exit(ABORTED_EXIT_CODE)

    def __exit__(self, *exc_info) -> None:
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._writer.shutdown(socket.SHUT_RDWR)
        self._watcher.join()
        self._writer.close()
        self._reader.close()


def any_process(flags: list[bool]) -> list[bool]:
    """For each flag, whether it is set on any process of the run. Every process must call this at the same
    point with the same number of flags (it is a collective)."""
    if jax.process_count() == 1:
        return list(flags)
    votes = multihost_utils.process_allgather(np.asarray(flags, np.bool_))  # [processes, len(flags)]
    return np.any(votes, axis=0).tolist()
