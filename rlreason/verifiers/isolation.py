"""A persistent pool of worker processes that runs batches of calls under a batch deadline, a per-call
wall-clock limit and a per-worker memory limit.

Why processes: a verifier stuck in sympy (`9^{9^{9}}`) holds the GIL in C code; a thread cannot be stopped and
`signal.alarm` works only in the main thread, while scoring runs in XLA callback threads. A process can be
killed. Why `subprocess` rather than multiprocessing's spawn or forkserver: those re-import the parent's
`__main__` in every worker (a training script that imports JAX: seconds and hundreds of MB per worker), and
fork is unsafe in a process running XLA threads. A worker here runs `python -c`, imports this package (the
built-in verifiers, no JAX), the modules named in `preload` and whatever unpickling a call needs, and talks to
the parent over a socket pair.

Bounds, so that no completion can stall a step or exhaust a host:
- batch deadline: every call of a `run` finishes by `deadline_s` after the run starts (counted from the
  first ready worker, so process start-up is not charged to it); at the deadline the calls still running are
  killed with their workers and the calls not yet started are dropped. All fail and count as timed out.
- per-call limit: a call gets at most `timeout_s` seconds from the moment its worker receives it; past that,
  its worker is killed and replaced, so a stuck call holds one worker, never a queue of calls behind it.
- memory: each worker's address space is capped (RLIMIT_AS); a call that reaches the cap makes its worker
  exit, and the call fails and counts as killed, like a call whose worker dies for any other reason.
Timed-out and killed calls are counted on the pool (`take_counts`), for the step metrics.

Several threads may `run` at once (on a host with several devices each device's callback scores its own
rows): their batches share the workers, each under its own deadline, and the thread that holds the driver
lock serves all of them.

Workers start on the first `run`, stay warm between runs, are replaced (started again at once, so that they
are warm for the next run) when a call times out or a worker dies, and are killed when the pool is closed or
garbage-collected, and at interpreter exit. Each worker also lowers its own CPU-time limit before every call,
so a worker orphaned by a crashed parent still dies within about the time limit instead of burning a core.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import math
import os
import queue
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
_WORKER_MAIN = ("import sys; from rlreason.verifiers.isolation import serve; "
                "serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])")
# Consecutive worker starts that may fail before `run` gives up: a worker that cannot even import its modules
# is an installation problem, not a bad completion, and must stop the run loudly.
MAX_FAILED_STARTS = 3
# A worker's exit status after a call ran out of memory: it exits rather than go on with a fragmented heap.
OUT_OF_MEMORY_EXIT = 86

Call = tuple[Callable, tuple]


class WorkerStartError(RuntimeError):
    """Worker processes keep failing to start (their traceback is on stderr)."""


@dataclasses.dataclass(frozen=True)
class CallCounts:
    """Calls that failed for lack of time or of a live worker since the counts were last taken."""

    timed_out: int = 0  # over the per-call limit, or running or not yet started at the batch deadline
    killed: int = 0  # the worker died running it: memory limit, CPU-time limit, a crash

    def __add__(self, other: CallCounts) -> CallCounts:
        return CallCounts(self.timed_out + other.timed_out, self.killed + other.killed)


def serve(fd: int, memory_limit_mb: int, preload: Sequence[str]) -> None:
    """A worker's main loop: receives (fn, args, cpu_limit_s) on the socket `fd`, replies (True, fn(*args)) or
    (False, error text), and returns when the parent closes its end. The address space is capped at
    `memory_limit_mb` MiB (0: no cap) before anything is imported. A preloaded module's `warm_up()`, if it has
    one, runs before the worker reports ready, so that one-time set-up (parser tables) is not charged to a call."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the CPU-time limit below must not write core files
    if memory_limit_mb:
        limit = memory_limit_mb * 2 ** 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name in preload:
        warm_up = getattr(importlib.import_module(name), "warm_up", None)
        if warm_up is not None:
            warm_up()
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
        except MemoryError:
            os._exit(OUT_OF_MEMORY_EXIT)
        except Exception as error:  # noqa: BLE001 - reported to the parent, which logs it
            reply = (False, f"{type(error).__name__}: {error}")
        connection.send(reply)


@dataclasses.dataclass(eq=False)
class _Batch:
    """The calls of one `run`, their results so far, and its deadline."""

    calls: Sequence[Call]
    results: list
    timeout_s: float
    deadline_s: float
    pending: collections.deque  # indices of the calls not yet sent to a worker
    deadline: float | None = None  # monotonic time; set once a worker is ready
    running: int = 0  # calls on workers now

    @property
    def done(self) -> bool:
        return not self.pending and self.running == 0


@dataclasses.dataclass(eq=False)
class _Worker:
    process: subprocess.Popen
    connection: Connection
    started_at: float
    ready: bool = False
    batch: _Batch | None = None  # the batch of the call it is running
    call_index: int | None = None
    deadline: float = math.inf


def _start_worker(preload: Sequence[str], memory_limit_mb: int) -> _Worker:
    parent_end, child_end = Pipe(duplex=True)
    # The package root goes first on the path, so that workers import this checkout even when it is not installed.
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN, str(child_end.fileno()), str(memory_limit_mb),
                                *preload], pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, env=env,
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


def _shut_down(workers: list[_Worker], fds: tuple[int, ...]) -> None:
    _stop_all(workers)
    for fd in fds:
        os.close(fd)


def default_num_workers() -> int:
    """One worker per core this process may run on, at most 8."""
    return min(8, len(os.sched_getaffinity(0)))


class WorkerPool:
    """`num_workers` processes (default `default_num_workers()`) that run picklable calls under the bounds of
    the module docstring. `memory_limit_mb`: each worker's address-space cap in MiB (0: none).

    `spare_workers` (default: as many as `num_workers`) more processes are kept started and idle: a worker
    killed mid-batch is replaced by a warm spare at once, since starting a worker (importing sympy) takes
    seconds, longer than a batch deadline. At most `num_workers` calls run at a time.

    Safe to call from any thread. A call's function must be importable by reference (a module-level function
    in a module other than `__main__`).
    """

    def __init__(self, num_workers: int | None = None, preload: Sequence[str] = (), memory_limit_mb: int = 0,
                 spare_workers: int | None = None, startup_timeout_s: float = 120.0):
        self.num_workers = num_workers or default_num_workers()
        self.spare_workers = self.num_workers if spare_workers is None else spare_workers
        self.preload = tuple(preload)
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker] = []
        self._batches: list[_Batch] = []  # in flight; touched by the driving thread only
        self._submitted: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()  # a submitting thread wakes the driver out of `wait`
        os.set_blocking(self._wake_read, False)
        self._failed_starts = 0
        self._counts = CallCounts()
        self._counts_lock = threading.Lock()
        self._driver = threading.Lock()
        self._finalizer = weakref.finalize(self, _shut_down, self._workers, (self._wake_read, self._wake_write))

    def close(self) -> None:
        """Kills the workers now; a later `run` starts fresh ones."""
        with self._driver:
            _stop_all(self._workers)

    def start(self) -> None:
        """Starts the missing workers and waits until every one is ready (a `run` needs only one). Raises
        WorkerStartError when they cannot start."""
        with self._driver:
            while True:
                self._turn()
                if len(self._workers) == self.num_workers + self.spare_workers and all(
                        worker.ready for worker in self._workers):
                    return

    def take_counts(self) -> CallCounts:
        """The timed-out and killed calls since the last `take_counts` (or since the pool was made); resets them."""
        with self._counts_lock:
            counts, self._counts = self._counts, CallCounts()
        return counts

    def run(self, calls: Sequence[Call], timeout_s: float, on_failure: Any, deadline_s: float = math.inf) -> list:
        """`fn(*args)` for each (fn, args) in `calls`, in order, run concurrently on the workers.

        A call that raises, runs past `timeout_s` seconds, is unfinished `deadline_s` seconds after the batch
        started, or whose worker dies gives `on_failure`. Raises WorkerStartError only when workers cannot be
        started at all.
        """
        if not calls:
            return []
        batch = _Batch(calls, [on_failure] * len(calls), timeout_s, deadline_s, collections.deque(range(len(calls))))
        self._submitted.put(batch)
        os.write(self._wake_write, b"\0")
        with self._driver:
            try:
                while not batch.done:
                    self._turn()
            except BaseException:  # a late reply must not land in the next run's results
                self._abandon(batch)
                raise
            if self._failed_starts < MAX_FAILED_STARTS:
                self._start_missing_workers()  # replacements warm up before the next run
        return batch.results

    def _abandon(self, batch: _Batch) -> None:
        batch.pending.clear()
        for worker in [worker for worker in self._workers if worker.batch is batch]:
            self._release(worker)
            self._replace(worker)

    def _turn(self) -> None:
        """One round of the driver loop: take new batches, fill idle workers, wait for a reply or a deadline."""
        while not self._submitted.empty():
            self._batches.append(self._submitted.get())
        if self._failed_starts >= MAX_FAILED_STARTS:
            raise WorkerStartError(f"{self._failed_starts} verifier worker processes in a row failed to start "
                                   f"(preloading {list(self.preload)}); see their traceback on stderr")
        self._start_missing_workers()
        if any(worker.ready for worker in self._workers):
            now = time.monotonic()
            for batch in self._batches:
                if batch.deadline is None:
                    batch.deadline = now + batch.deadline_s
        self._dispatch()
        self._collect()
        self._enforce_deadlines()
        self._batches = [batch for batch in self._batches if not batch.done]

    def _start_missing_workers(self) -> None:
        while len(self._workers) < self.num_workers + self.spare_workers:
            self._workers.append(_start_worker(self.preload, self.memory_limit_mb))

    def _dispatch(self) -> None:
        """Sends pending calls to idle ready workers, the oldest batch first, up to `num_workers` at a time."""
        idle = [worker for worker in self._workers if worker.ready and worker.batch is None]
        busy = len(self._workers) - len(idle) - sum(not worker.ready for worker in self._workers)
        for batch in self._batches:
            while idle and batch.pending and busy < self.num_workers:
                worker, index = idle.pop(), batch.pending.popleft()
                fn, args = batch.calls[index]
                try:
                    worker.connection.send((fn, args, batch.timeout_s))
                except OSError:  # the worker died while idle: retry the call on its replacement
                    batch.pending.appendleft(index)
                    self._replace(worker)
                    continue
                except Exception:  # noqa: BLE001 - the call cannot be pickled: it fails, the others go on
                    logger.exception("verifier call %s cannot be sent to a worker process", getattr(fn, "__name__", fn))
                    idle.append(worker)
                    continue
                worker.batch, worker.call_index, batch.running = batch, index, batch.running + 1
                busy += 1
                worker.deadline = min(time.monotonic() + batch.timeout_s, batch.deadline)

    def _collect(self) -> None:
        """Waits until a worker replies, a batch is submitted, or the nearest deadline passes; records replies."""
        deadlines = [worker.deadline if worker.ready else worker.started_at + self.startup_timeout_s
                     for worker in self._workers]
        deadlines += [batch.deadline for batch in self._batches if batch.deadline is not None]
        timeout = max(0.0, min(deadlines, default=math.inf) - time.monotonic())
        by_connection = {worker.connection: worker for worker in self._workers}
        for ready in wait([*by_connection, self._wake_read], None if math.isinf(timeout) else timeout):
            if ready == self._wake_read:
                while True:
                    try:
                        os.read(self._wake_read, 4096)
                    except BlockingIOError:
                        break
                continue
            worker = by_connection[ready]
            try:
                reply = ready.recv()
            except (EOFError, OSError):
                self._on_worker_death(worker)
                continue
            if reply == _READY:
                worker.ready, self._failed_starts = True, 0
                continue
            succeeded, value = reply
            if succeeded:
                worker.batch.results[worker.call_index] = value
            else:
                logger.warning("verifier call %s failed in its worker: %s", _call_name(worker), value)
            self._release(worker)

    def _release(self, worker: _Worker) -> None:
        """Marks `worker` idle, its call finished (its result recorded or left at the failure value)."""
        worker.batch.running -= 1
        worker.batch, worker.call_index, worker.deadline = None, None, math.inf

    def _count(self, timed_out: int = 0, killed: int = 0) -> None:
        with self._counts_lock:
            self._counts += CallCounts(timed_out, killed)

    def _on_worker_death(self, worker: _Worker) -> None:
        if not worker.ready:
            self._failed_starts += 1
        elif worker.batch is not None:
            code = worker.process.wait()
            reason = "memory limit" if code == OUT_OF_MEMORY_EXIT else f"exit status {code}"
            logger.warning("verifier worker died (%s) running %s; the call scores as failed", reason,
                           _call_name(worker))
            self._count(killed=1)
            self._release(worker)
        self._replace(worker)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for batch in self._batches:
            if batch.deadline is not None and now >= batch.deadline and not batch.done:
                running = [worker for worker in self._workers if worker.batch is batch]
                logger.warning("verifier batch deadline (%.3g s) passed with %d of %d calls unfinished; they score "
                               "as failed and their %d worker(s) are replaced", batch.deadline_s,
                               len(batch.pending) + len(running), len(batch.calls), len(running))
                self._count(timed_out=len(batch.pending) + len(running))
                batch.pending.clear()
                for worker in running:
                    self._replace(worker)
                    self._release(worker)
        for worker in list(self._workers):
            if worker.batch is not None and now >= worker.deadline:
                logger.warning("verifier call %s timed out; its worker is replaced", _call_name(worker))
                self._count(timed_out=1)
                self._replace(worker)  # killed before its call is released: a returned `run` left no worker behind
                self._release(worker)
            elif not worker.ready and now >= worker.started_at + self.startup_timeout_s:
                self._failed_starts += 1
                self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        """Kills `worker`; the next loop turn starts its replacement."""
        self._workers.remove(worker)
        _stop(worker)


_SHARED_POOLS: dict[tuple, WorkerPool] = {}
_SHARED_POOLS_LOCK = threading.Lock()


def shared_pool(preload: tuple[str, ...] = (), memory_limit_mb: int = 0) -> WorkerPool:
    """The process-wide pool for `preload` and `memory_limit_mb`, so that every scorer (training, evaluation)
    shares the same warm workers instead of starting its own."""
    with _SHARED_POOLS_LOCK:
        key = (preload, memory_limit_mb)
        if key not in _SHARED_POOLS:
            _SHARED_POOLS[key] = WorkerPool(preload=preload, memory_limit_mb=memory_limit_mb)
        return _SHARED_POOLS[key]


def take_shared_counts() -> CallCounts:
    """`take_counts` summed over every shared pool of this process."""
    with _SHARED_POOLS_LOCK:
        pools = list(_SHARED_POOLS.values())
    return sum((pool.take_counts() for pool in pools), CallCounts())


def _call_name(worker: _Worker) -> str:
    fn, args = worker.batch.calls[worker.call_index]
    return f"{getattr(fn, '__name__', fn)}{reprlib.repr(args)}"
