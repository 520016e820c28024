"""The tokenizer embedded in a GGUF file's metadata, rebuilt as a Hugging Face `tokenizers` tokenizer.

A GGUF file has no tokenizer.json: llama.cpp stores the vocabulary (`tokenizer.ggml.tokens`), the BPE merges,
each token's type (normal, control, user-defined, ...), the special token ids and the chat template as
metadata. This module builds the same byte-level BPE tokenizer transformers builds from them (its
`GPT2Tokenizer` path for `tokenizer.ggml.model == "gpt2"`), so the result encodes as transformers does.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from rlreason.tokenizers.base import TokenizerError
from rlreason.tokenizers.hf_tokenizer import HFTokenizer

# llama.cpp's token types (gguf.TokenType).
CONTROL, USER_DEFINED = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)

# `tokenizer.ggml.pre` -> the regex that splits text before BPE, for vocabularies whose merges were learned on
# other splits than GPT-2's (which ByteLevel applies when no entry matches).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
                        "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table, in which byte-level vocabularies spell their tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable},
            **{byte: chr(256 + offset) for offset, byte in enumerate(extra)}}


def gguf_metadata(reader: gguf.GGUFReader, key: str, default=None):
    """The value of a GGUF metadata key, or `default` when the file lacks it."""
    field = reader.fields.get(key)
    return field.contents() if field is not None else default


def _byte_level_bpe(tokens: list[str], merges: list[str], token_types: list[int],
                    pre: str | None) -> tokenizers.Tokenizer:
    """A byte-level BPE over `tokens` (ids = positions), control tokens special, user-defined ones whole."""
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    # A few files store added tokens in plain UTF-8 rather than the byte alphabet; respell those.
    vocab = {(token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))): index
             for index, token in enumerate(tokens)}
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[tuple(merge.split(" ")) for merge in merges],
                                              continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(pre)
    backend.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False) if split is None else
                             pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                      pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                               use_regex=False)]))
    backend.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel; adding it would grow the vocab.
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                for token, kind in zip(tokens, token_types)
                                if kind == CONTROL and set(token) <= alphabet])
    backend.add_tokens([AddedToken(token, normalized=False, special=False)
                        for token, kind in zip(tokens, token_types) if kind == USER_DEFINED and token in vocab])
    return backend


def tokenizer_from_gguf(path: str | Path) -> HFTokenizer:
    """The tokenizer described by a GGUF file's metadata, with its special tokens and chat template."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"GGUF file {str(path)!r} does not exist")
    reader = gguf.GGUFReader(path)
    kind = gguf_metadata(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerError(f"GGUF file {str(path)!r} has a {kind!r} tokenizer; only byte-level BPE ('gpt2') "
                             f"vocabularies are supported")
    tokens = gguf_metadata(reader, "tokenizer.ggml.tokens")
    token_types = gguf_metadata(reader, "tokenizer.ggml.token_type", [])
    backend = _byte_level_bpe(tokens, gguf_metadata(reader, "tokenizer.ggml.merges", []), token_types,
                              gguf_metadata(reader, "tokenizer.ggml.pre"))
    special_tokens = {f"{name}_token": tokens[token_id] if token_id is not None else None
                      for name, token_id in (("bos", gguf_metadata(reader, "tokenizer.ggml.bos_token_id")),
                                             ("eos", gguf_metadata(reader, "tokenizer.ggml.eos_token_id")),
                                             ("pad", gguf_metadata(reader, "tokenizer.ggml.padding_token_id")))}
    return HFTokenizer(backend, special_tokens, gguf_metadata(reader, "tokenizer.chat_template"), source=repr(str(path)))
