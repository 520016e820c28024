"""Test helper: texts as padded token rows, laid out like the sampler's prompts and completions."""

from __future__ import annotations

import numpy as np


def padded_rows(tokenizer, texts: list[str], width: int, left: bool = False,
                eos: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """ids int32 [B, width] and mask bool [B, width]: each text's ids (then EOS inside the mask when `eos`), padded
    with the pad id on the right, or on the left when `left` (prompts)."""
    ids = np.full((len(texts), width), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(texts), width), bool)
    for row, text in enumerate(texts):
        encoded = tokenizer.encode(text) + ([tokenizer.eos_id] if eos else [])
        columns = slice(width - len(encoded), width) if left else slice(0, len(encoded))
        ids[row, columns], mask[row, columns] = encoded, True
    return ids, mask
