"""Fixtures for the data tests."""

from __future__ import annotations

import pytest

from rlreason.tokenizers import train_sentencepiece


@pytest.fixture(scope="session")
def tokenizer():
    """Byte fallback covers any character the datasets hold; the corpus only sets which merges exist."""
    lines = [f"What is {a}+{b}? Natalia sold {a} clips to her friends in April." for a in range(40) for b in (3, 7)]
    return train_sentencepiece(lines, vocab_size=400, byte_fallback=True)
