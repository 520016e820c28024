"""Examples -> the step's fixed-width arrays, all checked and encoded once, before anything compiles.

A prompt row is three arrays: prompt_tokens int32 [Tp], the templated question's tokens left-padded with the
tokenizer's pad id; prompt_mask int32 [Tp], 1 on real tokens; gold_bytes uint8 [Lg], the gold answer and its
metadata as zero-padded JSON (`rlreason.verifiers.golds`). Tp = sampling.max_prompt_length and
Lg = task.max_gold_bytes; a prompt or gold that does not fit makes its row malformed (`bad_rows`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rlreason.config import ConfigError, TaskConfig
from rlreason.data.bad_rows import BadRow, MalformedRow, check_rows, enforce_policy, partition
from rlreason.data.examples import Split, dataset_name, task_rows
from rlreason.data.sources import Example
from rlreason.tokenizers import Tokenizer
from rlreason.tokenizers.templates import render_prompt
from rlreason.verifiers.golds import encode_golds

ROW_KEYS = ("prompt_tokens", "prompt_mask", "gold_bytes")


def left_pad(ids: list[int], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids left-padded to `width`: (prompt_tokens int32 [width], prompt_mask int32 [width])."""
    padding = width - len(ids)
    return (np.asarray([pad_id] * padding + ids, np.int32), np.asarray([0] * padding + [1] * len(ids), np.int32))


def encode_example(example: Example, tokenizer: Tokenizer, template: str, max_prompt_length: int,
                   max_gold_bytes: int) -> dict[str, np.ndarray]:
    """One example as a prompt row (see the module docstring); raises MalformedRow when it does not fit."""
    ids = tokenizer.encode(render_prompt(example.question, template, tokenizer))
    if len(ids) > max_prompt_length:
        raise MalformedRow(f"prompt is {len(ids)} tokens with template {template!r}, more than "
                           f"sampling.max_prompt_length={max_prompt_length} (raise it, or shorten the question)")
    try:
        gold = encode_golds([(example.answer, example.metadata)], max_gold_bytes)[0]
    except ValueError:
        raise MalformedRow(f"gold answer and metadata, as JSON, are longer than task.max_gold_bytes="
                           f"{max_gold_bytes} (raise it)") from None
    except TypeError:
        raise MalformedRow("gold metadata is not JSON-serializable, and the verifiers get it as JSON") from None
    prompt_tokens, prompt_mask = left_pad(ids, max_prompt_length, tokenizer.pad_id)
    return {"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask, "gold_bytes": gold}


@dataclasses.dataclass(frozen=True, eq=False)
class PromptSet:
    """A split's usable examples and their prompt rows, row-aligned, plus how many malformed rows were skipped.

    prompt_tokens int32 [N, Tp], prompt_mask int32 [N, Tp], gold_bytes uint8 [N, Lg]. It is also the grain
    source of `pipeline.prompt_batches`: `len` is N and `prompts[i]` is row i as a dict of those three keys.
    """

    examples: tuple[Example, ...]
    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    gold_bytes: np.ndarray
    skipped_rows: int

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {key: getattr(self, key)[index] for key in ROW_KEYS}


def load_prompts(task: TaskConfig, split: Split, count: int, tokenizer: Tokenizer, template: str,
                 max_prompt_length: int) -> PromptSet:
    """Every example of `split` (see `examples.task_rows`) checked and encoded now, so that a malformed row
    stops the run (or is counted as skipped, per task.on_bad_row) before anything compiles."""
    return encode_rows(task_rows(task, split, count), task, tokenizer, template, max_prompt_length,
                       dataset_name(task, split))


def encode_rows(rows: list[Example | BadRow], task: TaskConfig, tokenizer: Tokenizer, template: str,
                max_prompt_length: int, name: str) -> PromptSet:
    """`rows` checked and encoded as a PromptSet, task.on_bad_row applied; `name` names the rows in errors."""

    def encode(example: Example) -> tuple[Example, dict[str, np.ndarray]]:
        return example, encode_example(example, tokenizer, template, max_prompt_length, task.max_gold_bytes)

    encoded, bad_rows = partition(check_rows(rows, encode))
    enforce_policy(bad_rows, task.on_bad_row, name)
    if not encoded:
        raise ConfigError(f"{name} has no usable rows ({len(bad_rows)} malformed ones skipped): check its path "
                          f"and fields (task.prompt_field, task.answer_field), and that prompts fit "
                          f"sampling.max_prompt_length")
    examples, encoded_rows = zip(*encoded)
    return PromptSet(examples, **{key: np.stack([row[key] for row in encoded_rows]) for key in ROW_KEYS},
                     skipped_rows=len(bad_rows))
