"""Sharded checks run as separate Python processes: the CPU device count (8 simulated devices, or several
processes of 2) is fixed when JAX starts its backend, which the pytest process may already have done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def python_env() -> dict[str, str]:
    """The environment for a child Python: the repo importable, and a persistent compile cache so that
    reruns skip XLA compilation (it is keyed by the program, so it cannot change results)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/rlreason-jax-tests"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    return env


@pytest.fixture(scope="session")
def run_python():
    """run_python(args, timeout) runs `python *args` in the repo root and fails the test on a non-zero exit
    (check=False: returns whatever the exit status, for tests of failures)."""
    def run(args: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, *args], cwd=REPO, env=python_env(), capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"`python {' '.join(args)}` exited with {result.returncode}\n--- stdout\n"
                        f"{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
        return result
    return run
