"""Tokenizers behind one interface, and prompt templates."""

from __future__ import annotations

from pathlib import Path

from rlreason.tokenizers.base import REASONING_TAGS, Tokenizer, TokenizerError
from rlreason.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Loads a tokenizer by its file: `*.model` is sentencepiece; other backends register below."""
    path = Path(path)
    if path.suffix == ".model":
        return SentencePieceTokenizer.load(path)
    raise TokenizerError(f"cannot tell the tokenizer kind of {str(path)!r}: expected a sentencepiece .model file")


__all__ = ["REASONING_TAGS", "SentencePieceTokenizer", "Tokenizer", "TokenizerError", "load_tokenizer",
           "train_sentencepiece"]
