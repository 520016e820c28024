"""Runs a launcher in the test's process, as `python launch/SCRIPT ARGS...` runs it (its `main` through
`checks.guarded`), so that the launchers' imports are paid once per session rather than once per call.

(A module of its own, not conftest.py: several test folders have a conftest.py.)
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]


class LauncherRun(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def launcher(script: str):
    """The launcher module launch/SCRIPT (imported with launch/ on the path, as its sibling imports expect)."""
    if str(REPO / "launch") not in sys.path:
        sys.path.insert(0, str(REPO / "launch"))
    return importlib.import_module(script.removesuffix(".py"))


def run_launcher(script: str, *args: str) -> LauncherRun:
    """Exit code, stdout and stderr of `python launch/SCRIPT ARGS...` run from the repository root."""
    module = launcher(script)
    stdout, stderr, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(REPO)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = launcher("checks").guarded(module.main, list(args))
    finally:
        os.chdir(cwd)
    return LauncherRun(code, stdout.getvalue(), stderr.getvalue())
