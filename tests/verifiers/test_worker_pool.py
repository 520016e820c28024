"""The time-bounded worker pool: order, failures, timeouts with replacement, threads, start-up errors.

Calls are stdlib functions (time.sleep, os.getpid, os._exit, ...): workers import them by reference.
"""

from __future__ import annotations

import logging
import operator
import os
import resource
import threading
import time

import pytest

from rlreason.verifiers import WorkerPool, WorkerStartError
from rlreason.verifiers.isolation import CallCounts

FAILED = "failed"


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_results_come_back_in_call_order(pool):
    calls = [(operator.add, (i, 100)) for i in range(20)]
    assert pool.run(calls, timeout_s=5.0, on_failure=FAILED) == [i + 100 for i in range(20)]


def test_a_raising_call_fails_alone(pool, caplog):
    calls = [(operator.add, (1, 2)), (operator.truediv, (1, 0)), (operator.mul, (3, 4))]
    with caplog.at_level(logging.WARNING, logger="rlreason.verifiers"):
        assert pool.run(calls, timeout_s=5.0, on_failure=FAILED) == [3, FAILED, 12]
    assert "ZeroDivisionError" in caplog.text


def test_an_unpicklable_call_fails_alone(pool):
    calls = [(lambda: 1, ()), (operator.neg, (5,))]
    assert pool.run(calls, timeout_s=5.0, on_failure=FAILED) == [FAILED, -5]


def test_a_slow_call_times_out_and_its_worker_is_replaced(caplog):
    pool = WorkerPool(num_workers=1)
    try:
        [first_pid] = pool.run([(os.getpid, ())], timeout_s=5.0, on_failure=FAILED)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="rlreason.verifiers"):
            assert pool.run([(time.sleep, (60,))], timeout_s=0.5, on_failure=FAILED) == [FAILED]
        assert time.monotonic() - start < 10
        assert "timed out" in caplog.text
        assert not _is_running(first_pid)
        [second_pid] = pool.run([(os.getpid, ())], timeout_s=5.0, on_failure=FAILED)
        assert second_pid not in (first_pid, os.getpid())
    finally:
        pool.close()
    assert not _is_running(second_pid)


def test_other_calls_finish_while_one_times_out(pool):
    calls = [(operator.add, (1, 1)), (time.sleep, (60,))] + [(operator.add, (i, i)) for i in range(10)]
    start = time.monotonic()
    assert pool.run(calls, timeout_s=1.0, on_failure=FAILED) == [2, FAILED] + [2 * i for i in range(10)]
    assert time.monotonic() - start < 10


def test_a_dying_worker_fails_its_call_and_is_replaced(pool):
    calls = [(os._exit, (3,)), (operator.add, (2, 3))]
    assert pool.run(calls, timeout_s=5.0, on_failure=FAILED) == [FAILED, 5]
    assert pool.run([(operator.add, (4, 4))], timeout_s=5.0, on_failure=FAILED) == [8]


def test_runs_from_a_non_main_thread(pool):
    results = []
    thread = threading.Thread(target=lambda: results.append(
        pool.run([(operator.add, (20, 22))], timeout_s=5.0, on_failure=FAILED)))
    thread.start()
    thread.join(timeout=30)
    assert results == [[42]]


def test_each_call_runs_under_a_cpu_time_limit(pool):
    # A worker orphaned by a crashed parent is still stopped by the kernel within about the time limit.
    [(soft, hard)] = pool.run([(resource.getrlimit, (resource.RLIMIT_CPU,))], timeout_s=3.0, on_failure=FAILED)
    assert 3 <= soft <= 60 and hard == resource.RLIM_INFINITY


def test_workers_that_cannot_start_raise_a_clear_error():
    pool = WorkerPool(num_workers=1, preload=["rlreason.verifiers.no_such_module"])
    with pytest.raises(WorkerStartError, match=r"[3-9] verifier worker processes in a row failed to start"):
        pool.run([(operator.add, (1, 1))], timeout_s=5.0, on_failure=FAILED)
    pool.close()


def test_concurrent_runs_share_the_workers_and_get_their_own_results(pool):
    # One run per thread, as when each device's host callback scores its own rows.
    results = {}

    def run(offset):
        results[offset] = pool.run([(operator.add, (i, offset)) for i in range(15)], timeout_s=5.0, on_failure=FAILED)

    threads = [threading.Thread(target=run, args=(offset,)) for offset in (100, 200, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {offset: [i + offset for i in range(15)] for offset in (100, 200, 300)}


def test_at_most_num_workers_calls_run_at_once_and_spares_wait_warm():
    pool = WorkerPool(num_workers=2, spare_workers=1)
    try:
        pool.start()
        pids = pool.run([(os.getpid, ())] * 30, timeout_s=5.0, on_failure=FAILED)
        assert FAILED not in pids and len(set(pids)) <= 3
        # Two calls that never end take both running slots; the batch deadline cuts them and the queued one.
        calls = [(time.sleep, (60,)), (time.sleep, (60,)), (operator.add, (1, 1))]
        assert pool.run(calls, timeout_s=60.0, on_failure=FAILED, deadline_s=1.0) == [FAILED] * 3
        assert pool.take_counts() == CallCounts(timed_out=3, killed=0)
    finally:
        pool.close()


def test_counts_are_taken_once(pool):
    pool.take_counts()
    assert pool.run([(os._exit, (1,)), (time.sleep, (60,))], timeout_s=1.0, on_failure=FAILED) == [FAILED] * 2
    assert pool.take_counts() == CallCounts(timed_out=1, killed=1)
    assert pool.take_counts() == CallCounts()
