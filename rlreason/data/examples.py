"""Examples: a question, its gold answer and verifier metadata, from whichever source the task names."""

from __future__ import annotations

import dataclasses

from rlreason.config import TaskConfig
from rlreason.data import synthetic


@dataclasses.dataclass(frozen=True)
class Example:
    question: str
    answer: str
    metadata: dict = dataclasses.field(default_factory=dict)


def task_examples(task: TaskConfig, split: str, count: int) -> list[Example]:
    """`count` examples of the configured task. split "train" and "eval" never share generated problems."""
    if task.name not in synthetic.SYNTHETIC_TASKS:
        raise ValueError(f"task.name={task.name!r} has no example source yet")
    seed = task.seed + (synthetic.EVAL_SEED_OFFSET if split == "eval" else 0)
    return [Example(p.question, p.answer, p.metadata) for p in synthetic.generate(task, count, seed)]
