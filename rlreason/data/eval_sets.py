"""The held-out sets of `eval.sets` as prompt sets, each with the reward functions that score it.

A set of source `task` is the held-out split of the run's task (`examples.task_rows(task, "eval")`). Another
source reads its file (`path`) or generates its problems as a run of that `task.name` would, with the run's
task settings for the rest (digits, seed, max_gold_bytes, on_bad_row); file sets read every row of `path`,
in order, up to `num_problems`.

Rewards: a set is scored by the run's `grpo.rewards` (so format and strict accuracy mean what they mean in
training), except that a set from another source is judged by that source's accuracy reward
(`sources.accuracy_reward`: gsm8k for GSM8K, math_equiv for MATH-500 / AIME / AMC), which takes the place and
weight of `grpo.accuracy_reward` among them.
"""

from __future__ import annotations

import dataclasses

from rlreason.config import Config, EvalSetConfig, RewardConfig, TaskConfig
from rlreason.data.encoding import PromptSet, encode_rows, load_prompts
from rlreason.data.readers import read_records
from rlreason.data.sources import FILE_SOURCES, accuracy_reward, file_examples
from rlreason.data.examples import asked, task_rows
from rlreason.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True, eq=False)
class EvalSet:
    """A held-out set ready to evaluate: its name, its prompts, and what scores them (see the module docstring)."""

    name: str
    prompts: PromptSet
    rewards: tuple[RewardConfig, ...]
    accuracy_reward: str


def set_task(cfg: Config, eval_set: EvalSetConfig) -> TaskConfig:
    """The TaskConfig whose held-out split, or file, the set reads."""
    if eval_set.source == "task":
        return cfg.task
    file_fields = {"path": eval_set.path, "eval_path": eval_set.path} if eval_set.source in FILE_SOURCES else {}
    if eval_set.source != cfg.task.name:  # another source's field names and metadata are its own
        file_fields.update(prompt_field="", answer_field="answer", metadata_fields=())
    return dataclasses.replace(cfg.task, name=eval_set.source, reasoning_gym_name=eval_set.reasoning_gym_name,
                               **file_fields)


def set_rewards(cfg: Config, accuracy: str) -> tuple[RewardConfig, ...]:
    """grpo.rewards with grpo.accuracy_reward replaced by `accuracy` (same weight)."""
    return tuple(dataclasses.replace(reward, name=accuracy) if reward.name == cfg.grpo.accuracy_reward else reward
                 for reward in cfg.grpo.rewards)


def load_eval_set(cfg: Config, index: int, tokenizer: Tokenizer) -> EvalSet:
    """eval.sets[index], read, checked and encoded."""
    eval_set = cfg.eval.sets[index]
    task = set_task(cfg, eval_set)
    count = eval_set.num_problems or cfg.task.num_eval
    template, width = cfg.tokenizer.template, cfg.sampling.max_prompt_length
    if eval_set.source == "task":
        return EvalSet(eval_set.name, load_prompts(task, "eval", count, tokenizer, template, width),
                       cfg.grpo.rewards, cfg.grpo.accuracy_reward)
    key = f"eval.sets[{index}]"
    if eval_set.source in FILE_SOURCES:
        rows = asked(task, file_examples(task, read_records(eval_set.path, f"{key}.path")[:count]))
    else:
        rows = task_rows(task, "eval", count)
    accuracy = accuracy_reward(task)
    return EvalSet(eval_set.name, encode_rows(rows, task, tokenizer, template, width, f"eval set {key} "
                                              f"({eval_set.name!r}, source {eval_set.source!r})"),
                   set_rewards(cfg, accuracy), accuracy)


def load_eval_sets(cfg: Config, tokenizer: Tokenizer) -> tuple[EvalSet, ...]:
    """Every set of eval.sets, in order."""
    return tuple(load_eval_set(cfg, index, tokenizer) for index in range(len(cfg.eval.sets)))
