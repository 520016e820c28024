"""A persistent pool of worker processes that runs calls under a per-call wall-clock limit.

Why processes: a verifier stuck in sympy (`9^{9^{9}}`) holds the GIL in C code; a thread cannot be stopped and
`signal.alarm` works only in the main thread, while scoring runs in XLA callback threads. A process can be
killed. Why `subprocess` rather than multiprocessing's spawn or forkserver: those re-import the parent's
`__main__` in every worker (a training script that imports JAX: seconds and hundreds of MB per worker), and
fork is unsafe in a process running XLA threads. A worker here runs `python -c`, imports this package (the
built-in verifiers, no JAX), the modules named in `preload` and whatever unpickling a call needs, and talks to
the parent over a socket pair.

Workers start on the first `run`, stay warm between runs, are replaced when a call times out or a worker dies,
and are killed when the pool is closed or garbage-collected, and at interpreter exit. Each worker also lowers
its own CPU-time limit before every call, so a worker orphaned by a crashed parent still dies within about the
time limit instead of burning a core.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import logging
import math
import os
import reprlib
import resource
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import Any, Callable, Sequence

logger = logging.getLogger("rlreason.verifiers")

_READY = "ready"
_WORKER_MAIN = "import sys; from rlreason.verifiers.isolation import serve; serve(int(sys.argv[1]), sys.argv[2:])"
# Consecutive worker starts that may fail before `run` gives up: a worker that cannot even import its modules
# is an installation problem, not a bad completion, and must stop the run loudly.
MAX_FAILED_STARTS = 3

Call = tuple[Callable, tuple]


class WorkerStartError(RuntimeError):
    """Worker processes keep failing to start (their traceback is on stderr)."""


def serve(fd: int, preload: Sequence[str]) -> None:
    """A worker's main loop: receives (fn, args, cpu_limit_s) on the socket `fd`, replies (True, fn(*args)) or
    (False, error text), and returns when the parent closes its end."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the CPU-time limit below must not write core files
    for module in preload:
        importlib.import_module(module)
    connection = Connection(fd)
    connection.send(_READY)
    while True:
        try:
            fn, args, cpu_limit_s = connection.recv()
        except EOFError:
            return
        except Exception as error:  # noqa: BLE001 - e.g. the call's module does not import here: report it
            connection.send((False, f"cannot unpickle the call: {type(error).__name__}: {error}"))
            continue
        used_s = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(used_s + cpu_limit_s), resource.RLIM_INFINITY))
        try:
            reply = (True, fn(*args))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which logs it
            reply = (False, f"{type(error).__name__}: {error}")
        connection.send(reply)


@dataclasses.dataclass(eq=False)
class _Worker:
    process: subprocess.Popen
    connection: Connection
    started_at: float
    ready: bool = False
    call_index: int | None = None  # the call it is running
    deadline: float = math.inf


def _start_worker(preload: Sequence[str]) -> _Worker:
    parent_end, child_end = Pipe(duplex=True)
    # The package root goes first on the path, so that workers import this checkout even when it is not installed.
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN, str(child_end.fileno()), *preload],
                               pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, env=env,
                               start_new_session=True)  # Ctrl-C in a terminal reaches the parent only
    child_end.close()
    return _Worker(process, parent_end, started_at=time.monotonic())


def _stop(worker: _Worker) -> None:
    worker.connection.close()
    worker.process.kill()
    worker.process.wait()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        _stop(worker)
    workers.clear()


class WorkerPool:
    """`num_workers` processes (default: one per core, at most 8) that run picklable calls with a time limit.

    Safe to call from any thread; concurrent `run`s are serialized. A call's function must be importable by
    reference (a module-level function in a module other than `__main__`).
    """

    def __init__(self, num_workers: int | None = None, preload: Sequence[str] = (),
                 startup_timeout_s: float = 120.0):
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.preload = tuple(preload)
        self.startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker] = []
        self._failed_starts = 0
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def close(self) -> None:
        """Kills the workers now; a later `run` starts fresh ones."""
        with self._lock:
            _stop_all(self._workers)

    def run(self, calls: Sequence[Call], timeout_s: float, on_failure: Any) -> list:
        """`fn(*args)` for each (fn, args) in `calls`, in order, run concurrently on the workers.

        Each call gets `timeout_s` seconds of wall-clock time from the moment its worker receives it; a call that
        raises, exceeds that time (its worker is killed and replaced) or whose worker dies gives `on_failure`.
        Raises WorkerStartError only when workers cannot be started at all.
        """
        with self._lock:
            results = [on_failure] * len(calls)
            pending = collections.deque(range(len(calls)))
            try:
                while pending or any(worker.call_index is not None for worker in self._workers):
                    self._start_missing_workers()
                    for worker in self._workers:
                        if worker.ready and worker.call_index is None and pending:
                            self._dispatch(worker, pending, calls, timeout_s)
                    self._collect(results, calls)
                    self._enforce_deadlines(calls)
            finally:  # left by an exception: a late reply must not land in the next run's results
                for worker in [worker for worker in self._workers if worker.call_index is not None]:
                    self._replace(worker)
            return results

    def _start_missing_workers(self) -> None:
        if self._failed_starts >= MAX_FAILED_STARTS:
            raise WorkerStartError(f"{self._failed_starts} verifier worker processes in a row failed to start "
                                   f"(preloading {list(self.preload)}); see their traceback on stderr")
        while len(self._workers) < self.num_workers:
            self._workers.append(_start_worker(self.preload))

    def _dispatch(self, worker: _Worker, pending: collections.deque, calls: Sequence[Call], timeout_s: float) -> None:
        index = pending.popleft()
        fn, args = calls[index]
        try:
            worker.connection.send((fn, args, timeout_s))
        except OSError:  # the worker died while idle: retry the call on its replacement
            pending.appendleft(index)
            self._replace(worker)
            return
        except Exception:  # noqa: BLE001 - the call cannot be pickled: it fails, the others go on
            logger.exception("verifier call %s cannot be sent to a worker process", getattr(fn, "__name__", fn))
            return
        worker.call_index, worker.deadline = index, time.monotonic() + timeout_s

    def _collect(self, results: list, calls: Sequence[Call]) -> None:
        """Waits until a worker replies or the nearest deadline passes; records replies."""
        deadlines = [worker.deadline if worker.ready else worker.started_at + self.startup_timeout_s
                     for worker in self._workers]
        timeout = max(0.0, min(deadlines) - time.monotonic())
        for connection in wait([worker.connection for worker in self._workers], timeout):
            worker = next(worker for worker in self._workers if worker.connection is connection)
            try:
                reply = connection.recv()
            except (EOFError, OSError):
                self._on_worker_death(worker, calls)
                continue
            if reply == _READY:
                worker.ready, self._failed_starts = True, 0
                continue
            succeeded, value = reply
            if succeeded:
                results[worker.call_index] = value
            else:
                logger.warning("verifier call %s failed in its worker: %s", _call_name(calls, worker), value)
            worker.call_index, worker.deadline = None, math.inf

    def _on_worker_death(self, worker: _Worker, calls: Sequence[Call]) -> None:
        if not worker.ready:
            self._failed_starts += 1
        elif worker.call_index is not None:
            logger.warning("verifier worker died (exit code %s) running %s", worker.process.poll(),
                           _call_name(calls, worker))
        self._replace(worker)

    def _enforce_deadlines(self, calls: Sequence[Call]) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.ready and now >= worker.deadline:
                logger.warning("verifier call %s timed out; its worker is replaced", _call_name(calls, worker))
                self._replace(worker)
            elif not worker.ready and now >= worker.started_at + self.startup_timeout_s:
                self._failed_starts += 1
                self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        """Kills `worker`; the next loop turn starts its replacement."""
        self._workers.remove(worker)
        _stop(worker)


@functools.cache
def shared_pool(preload: tuple[str, ...] = ()) -> WorkerPool:
    """The process-wide pool for `preload`, so that every scorer (training, evaluation) shares the same warm
    workers instead of starting its own."""
    return WorkerPool(preload=preload)


def _call_name(calls: Sequence[Call], worker: _Worker) -> str:
    fn, args = calls[worker.call_index]
    return f"{getattr(fn, '__name__', fn)}{reprlib.repr(args)}"
