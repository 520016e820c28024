"""Shared by the launchers: the training command every host runs, and a launch as a list of shell steps
that `--dry-run` prints (a script you could paste) and a real run executes in order."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Step:
    """One shell command of a launch; `always` steps (log collection, teardown) run even after a failure."""

    title: str
    command: str
    always: bool = False


def train_command(config: str, overrides: Sequence[str], distributed: Sequence[str],
                  program: Sequence[str] = ("rlreason", "train")) -> list[str]:
    """`rlreason train CONFIG key=value...` with the launcher's `distributed.*` overrides last (they win)."""
    return [*program, config, *overrides, *distributed]


def render(steps: Sequence[Step]) -> str:
    """The steps as a commented shell script."""
    return "\n".join(f"# {number}. {step.title}\n{step.command}" for number, step in enumerate(steps, 1))


def execute(steps: Sequence[Step]) -> int:
    """Runs the steps in order; after a failure only `always` steps run. Returns the first failure's code."""
    failure = 0
    for number, step in enumerate(steps, 1):
        if failure and not step.always:
            continue
        print(f"# {number}. {step.title}\n{step.command}", file=sys.stderr, flush=True)
        code = subprocess.run(step.command, shell=True, executable="/bin/bash").returncode
        if code and not failure:
            failure = code
    return failure


def run_or_print(steps: Sequence[Step], dry_run: bool) -> int:
    if dry_run:
        print(render(steps))
        return 0
    return execute(steps)
