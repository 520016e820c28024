"""The examples of the configured task for one split: the source `task.name` names and the train / eval split.

Splits. Generated tasks: eval problems come from seed + `EVAL_SEED_OFFSET`, a seed stream training never
uses (on a tiny problem space, such as 1-digit addition, the same problem can still come up in both). Files:
eval reads `task.eval_path` when it is set, and training all of `task.path`; otherwise `task.num_eval` rows of
`task.path`, chosen by `task.seed`, are held out for eval and training never sees them. `count` is how many
problems to generate, or at most how many rows to take, in file order.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Literal

from rlreason.config import ConfigError, TaskConfig
from rlreason.data.bad_rows import BadRow, check_rows
from rlreason.data.readers import Record, read_records
from rlreason.data.sources import (FILE_SOURCES, Example, file_examples, humaneval_example, humaneval_records,
                                   reasoning_gym_examples, synthetic_examples)
from rlreason.data.synthetic import EVAL_SEED_OFFSET, SYNTHETIC_TASKS

Split = Literal["train", "eval"]


def _file_split(task: TaskConfig, split: Split) -> list[Record | BadRow]:
    """The rows of `split`, in file order."""
    if task.eval_path and split == "eval":
        return read_records(task.eval_path, "task.eval_path")
    rows = read_records(task.path, "task.path")
    if task.eval_path:
        return rows
    return _held_out_split(task, rows, split, "task.path")


def _held_out_split(task: TaskConfig, rows: list, split: Split, where: str) -> list:
    """`task.num_eval` of `rows` chosen by `task.seed` for eval, the others for training, in order."""
    if split == "train" and len(rows) <= task.num_eval:
        raise ConfigError(f"config key 'task.num_eval' holds out {task.num_eval} rows, but {where} has only "
                          f"{len(rows)}; lower task.num_eval or give the eval rows in task.eval_path")
    held_out = set(random.Random(task.seed).sample(range(len(rows)), min(task.num_eval, len(rows))))
    return [row for index, row in enumerate(rows) if (index in held_out) == (split == "eval")]


def task_rows(task: TaskConfig, split: Split, count: int) -> list[Example | BadRow]:
    """`count` examples of `split`, with a BadRow in place of each malformed one (the policy is not applied),
    questions put as `task.question_format` says."""
    return asked(task, _source_rows(task, split, count))


def asked(task: TaskConfig, rows: list[Example | BadRow]) -> list[Example | BadRow]:
    """`rows` with each question put as `task.question_format` says."""
    return [dataclasses.replace(row, question=task.question_format.format(question=row.question))
            if isinstance(row, Example) else row for row in rows]


def _source_rows(task: TaskConfig, split: Split, count: int) -> list[Example | BadRow]:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    seed = task.seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
    if task.name in SYNTHETIC_TASKS:
        return synthetic_examples(task, count, seed)
    if task.name == "reasoning_gym":
        return reasoning_gym_examples(task, count, seed)
    if task.name == "humaneval":
        return check_rows(_held_out_split(task, humaneval_records(), split, "HumanEval")[:count], humaneval_example)
    if task.name in FILE_SOURCES:
        return file_examples(task, _file_split(task, split)[:count])
    raise ValueError(f"task.name={task.name!r} has no example source")


def dataset_name(task: TaskConfig, split: Split) -> str:
    """How messages name a task's split: "the train split of task 'gsm8k'"."""
    return f"the {split} split of task {task.name!r}"
