"""Tokenizers behind one interface, and prompt templates."""

from __future__ import annotations

from pathlib import Path

from rlreason.tokenizers.base import REASONING_TAGS, Tokenizer, TokenizerError
from rlreason.tokenizers.gguf_vocab import tokenizer_from_gguf
from rlreason.tokenizers.hf_tokenizer import HFTokenizer
from rlreason.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Loads a tokenizer by its file: `*.model` is sentencepiece, `*.json` a Hugging Face tokenizer.json (with
    tokenizer_config.json beside it), `*.gguf` the vocabulary embedded in a GGUF model file."""
    path = Path(path)
    if path.suffix == ".model":
        return SentencePieceTokenizer.load(path)
    if path.suffix == ".json":
        return HFTokenizer.load(path)
    if path.suffix == ".gguf":
        return tokenizer_from_gguf(path)
    raise TokenizerError(f"cannot tell the tokenizer kind of {str(path)!r}: expected a sentencepiece .model, "
                         f"a tokenizer.json or a .gguf file")


__all__ = ["REASONING_TAGS", "HFTokenizer", "SentencePieceTokenizer", "Tokenizer", "TokenizerError",
           "load_tokenizer", "tokenizer_from_gguf", "train_sentencepiece"]
