"""The prompt pipeline: examples -> tokenized, left-padded prompt batches, through grain.

A batch is a dict of numpy arrays for P prompts (each later sampled G times inside the step):
  prompt_tokens [P, Tp] int32 left-padded, prompt_mask [P, Tp] int32, gold_bytes [P, Lg] uint8.
"""

from __future__ import annotations

import grain
import numpy as np

from rlreason.data.examples import Example
from rlreason.tokenizers import Tokenizer
from rlreason.tokenizers.templates import render_prompt
from rlreason.verifiers.golds import encode_golds

MAX_GOLD_BYTES = 512


class PromptTooLongError(ValueError):
    """A prompt does not fit in sampling.max_prompt_length."""


def encode_prompt(example: Example, tokenizer: Tokenizer, template: str, max_prompt_length: int) -> dict:
    """One example as left-padded arrays (see the module docstring for the keys)."""
    ids = tokenizer.encode(render_prompt(example.question, template))
    if len(ids) > max_prompt_length:
        raise PromptTooLongError(
            f"prompt of {len(ids)} tokens exceeds sampling.max_prompt_length={max_prompt_length}: "
            f"{example.question[:80]!r}")
    padding = max_prompt_length - len(ids)
    return {
        "prompt_tokens": np.asarray([tokenizer.pad_id] * padding + ids, np.int32),
        "prompt_mask": np.asarray([0] * padding + [1] * len(ids), np.int32),
        "gold_bytes": encode_golds([(example.answer, example.metadata)], MAX_GOLD_BYTES)[0],
    }


def encode_batch(examples: list[Example], tokenizer: Tokenizer, template: str, max_prompt_length: int) -> dict:
    """Several examples stacked into one batch (for evaluation)."""
    rows = [encode_prompt(example, tokenizer, template, max_prompt_length) for example in examples]
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def prompt_batches(examples: list[Example], tokenizer: Tokenizer, template: str, max_prompt_length: int,
                   batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
    """An endless, checkpointable grain iterator of prompt batches for this process.

    Each process reads every `process_count`-th example; the order is a new seeded permutation each epoch.
    """
    dataset = (grain.MapDataset.source(examples)[process_index::process_count]
               .shuffle(seed=seed)
               .repeat(None)
               .map(lambda example: encode_prompt(example, tokenizer, template, max_prompt_length))
               .batch(batch_size, drop_remainder=True))
    return iter(dataset.to_iter_dataset())
