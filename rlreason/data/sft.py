"""Prompt / response rows for supervised fine-tuning, encoded and packed into the SFT step's fixed-width rows.

An SFT file is JSONL or Parquet (or a folder of them, read as `readers` reads them) whose rows hold a prompt and
a response (`sft.prompt_field`, `sft.response_field`); `rlreason generate` writes such files. Each example
becomes the tokens of its templated prompt, then its response and EOS; the loss covers the response and EOS.

A token row is four arrays of width T = sft.seq_len:
  tokens int32 [T]       the examples' tokens one after another, then the tokenizer's pad id
  segment_ids int32 [T]  1, 2, ... for the row's first, second, ... example, 0 on padding
  positions int32 [T]    each token's position within its own example (so a packed example sees what it
                         would see alone: rlreason.models.transformer attends within a segment only)
  loss_mask int32 [T]    1 on response and EOS tokens
With `sft.packing` the examples are packed first-fit in their shuffled order (an example goes into the first row
with room for it); without it, one example a row.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from rlreason.config import Config, ConfigError
from rlreason.data.bad_rows import BadRow, MalformedRow, check_rows, enforce_policy, partition
from rlreason.data.readers import Record, read_records
from rlreason.tokenizers import Tokenizer
from rlreason.tokenizers.templates import render_prompt

SFT_ROW_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")


@dataclasses.dataclass(frozen=True)
class SFTExample:
    prompt: str  # the question, before the template
    response: str
    location: str  # "path:line"


@dataclasses.dataclass(frozen=True, eq=False)
class SFTRows:
    """Packed token rows (SFT_ROW_KEYS, each [N, T]) and what went into them. Also a grain source: `len` is N
    and `rows[i]` is row i as a dict."""

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    loss_mask: np.ndarray
    num_examples: int
    skipped_rows: int

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {key: getattr(self, key)[index] for key in SFT_ROW_KEYS}


def read_sft_examples(path: str, prompt_field: str, response_field: str,
                      config_key: str = "sft.path") -> list[SFTExample | BadRow]:
    """The examples of the file or folder `path`, a BadRow for each row whose fields are missing or not text."""

    def example(record: Record) -> SFTExample:
        values = []
        for field in (prompt_field, response_field):
            value = record.fields.get(field)
            if not isinstance(value, str):
                found = "is missing" if value is None else f"holds {value!r} ({type(value).__name__}), not text"
                raise MalformedRow(f"field {field!r} {found} (fields here: {sorted(record.fields)}; set "
                                   f"sft.prompt_field / sft.response_field)")
            values.append(value)
        return SFTExample(values[0], values[1], record.location)

    return check_rows(read_records(path, config_key), example)


def encode_sft_example(example: SFTExample, tokenizer: Tokenizer, template: str,
                       seq_len: int) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of one example; raises MalformedRow when it is longer than `seq_len`."""
    prompt_ids = tokenizer.encode(render_prompt(example.prompt, template, tokenizer))
    response_ids = tokenizer.encode(example.response) + [tokenizer.eos_id]
    length = len(prompt_ids) + len(response_ids)
    if length > seq_len:
        raise MalformedRow(f"prompt and response are {length} tokens with template {template!r}, more than "
                           f"sft.seq_len={seq_len} (raise it, or shorten the row)")
    return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)


def pack(sequences: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int, packing: bool) -> dict:
    """(ids, loss mask) sequences, each at most seq_len long -> token rows as in the module docstring, each
    SFT_ROW_KEYS array [N, seq_len]; first-fit with `packing`, else one sequence a row."""
    rows: list[list[tuple[list[int], list[int]]]] = []
    room: list[int] = []
    for ids, mask in sequences:
        target = next((index for index, free in enumerate(room) if free >= len(ids)), None) if packing else None
        if target is None:
            rows.append([])
            room.append(seq_len)
            target = len(rows) - 1
        rows[target].append((ids, mask))
        room[target] -= len(ids)
    arrays = {key: np.zeros((len(rows), seq_len), np.int32) for key in SFT_ROW_KEYS}
    arrays["tokens"][:] = pad_id
    for row, members in enumerate(rows):
        start = 0
        for segment, (ids, mask) in enumerate(members, start=1):
            span = slice(start, start + len(ids))
            arrays["tokens"][row, span] = ids
            arrays["segment_ids"][row, span] = segment
            arrays["positions"][row, span] = np.arange(len(ids))
            arrays["loss_mask"][row, span] = mask
            start += len(ids)
    return arrays


def load_sft_rows(cfg: Config, tokenizer: Tokenizer, path: str | None = None) -> SFTRows:
    """sft.path (or `path`) read, checked and encoded now, task.on_bad_row applied, the examples shuffled with
    train.seed and packed. Raises ConfigError when no row is usable."""
    settings = cfg.sft
    path = path or settings.path
    if not path:
        raise ConfigError("config key 'sft.path' is empty: name a .jsonl / .parquet file (or a folder of them) of "
                          "prompt / response rows, e.g. one written by rlreason generate")
    examples = read_sft_examples(path, settings.prompt_field, settings.response_field)
    encoded, bad_rows = partition(check_rows(examples, lambda example: encode_sft_example(
        example, tokenizer, cfg.tokenizer.template, settings.seq_len)))
    enforce_policy(bad_rows, cfg.task.on_bad_row, f"SFT data {path!r}")
    if not encoded:
        raise ConfigError(f"config key 'sft.path': {path!r} has no usable rows ({len(bad_rows)} malformed ones "
                          f"skipped)")
    random.Random(cfg.train.seed).shuffle(encoded)
    arrays = pack(encoded, settings.seq_len, tokenizer.pad_id, settings.packing)
    return SFTRows(**arrays, num_examples=len(encoded), skipped_rows=len(bad_rows))
