"""The tokenizer embedded in a GGUF file's metadata, rebuilt as a Hugging Face `tokenizers` tokenizer.

A GGUF file has no tokenizer.json: llama.cpp stores the vocabulary (`tokenizer.ggml.tokens`), the BPE merges
(or, for sentencepiece vocabularies, scores that imply them), each token's type (normal, control,
user-defined, ...), the special token ids and the chat template as metadata. This module builds the same
tokenizer transformers builds from them (its `GPT2Tokenizer` path for `tokenizer.ggml.model == "gpt2"`, its
`LlamaTokenizer` path for "llama"), so the result encodes as transformers does.
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


def _byte_level_bpe(reader: gguf.GGUFReader, tokens: list[str]) -> tokenizers.Tokenizer:
    """GPT-2 style: tokens spelled in the byte alphabet, merges from the file, a per-vocabulary split regex."""
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    # A few files store added tokens in plain UTF-8 rather than the byte alphabet; respell those.
    vocab = {(token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))): index
             for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ")) for merge in gguf_metadata(reader, "tokenizer.ggml.merges", [])]
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                              end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(gguf_metadata(reader, "tokenizer.ggml.pre"))
    backend.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False) if split is None else
                             pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                      pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                               use_regex=False)]))
    backend.decoder = decoders.ByteLevel()
    return backend


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """The BPE merges a sentencepiece vocabulary implies: every split of a token into two tokens, ranked by the
    merged token's score (sentencepiece merges best-scored pieces first), ties broken as transformers does."""
    ids = {token: index for index, token in enumerate(tokens)}
    ranked = []
    for token, score in dict(zip(tokens, scores)).items():
        splits = [(token[:cut], token[cut:], score) for cut in range(1, len(token))
                  if token[:cut] in ids and token[cut:] in ids]
        ranked += sorted(splits, key=lambda merge: (ids[merge[0]], ids[merge[1]]))
    ranked.sort(key=lambda merge: (merge[2], len(merge[0]), len(merge[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


def _sentencepiece_bpe(reader: gguf.GGUFReader, tokens: list[str]) -> tokenizers.Tokenizer:
    """Llama / Mistral style: "▁" marks spaces, unknown characters fall back to byte pieces `<0xNN>`."""
    merges = ([tuple(merge.split(" ")) for merge in gguf_metadata(reader, "tokenizer.ggml.merges")]
              if "tokenizer.ggml.merges" in reader.fields
              else _merges_from_scores(tokens, gguf_metadata(reader, "tokenizer.ggml.scores")))
    backend = tokenizers.Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(tokens)},
                                              merges=merges, fuse_unk=True, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
    return backend


# `tokenizer.ggml.model` -> builder of the tokenizer's model, pre-tokenizer and decoder.
VOCABULARY_BUILDERS = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
# Architectures whose sentencepiece vocabularies transformers rebuilds with extra fixes this module lacks.
_UNSUPPORTED_SENTENCEPIECE_ARCHITECTURES = ("gemma", "gemma2", "gemma3", "phi3")


def _add_special_tokens(backend: tokenizers.Tokenizer, tokens: list[str], token_types: list[int]) -> None:
    """Control tokens become special tokens and user-defined ones (like `<think>`) added tokens, so that both
    stay whole in text. A control token missing from the vocabulary as spelled (a llama.cpp mislabel in
    byte-level files) is skipped: adding it would grow the vocabulary past the model's."""
    vocab = backend.get_vocab()
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                for token, kind in zip(tokens, token_types) if kind == CONTROL and token in vocab])
    backend.add_tokens([AddedToken(token, normalized=False, special=False)
                        for token, kind in zip(tokens, token_types) if kind == USER_DEFINED and token in vocab])


def tokenizer_from_gguf(path: str | Path) -> HFTokenizer:
    """The tokenizer described by a GGUF file's metadata, with its special tokens and chat template."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"GGUF file {str(path)!r} does not exist")
    reader = gguf.GGUFReader(path)
    kind = gguf_metadata(reader, "tokenizer.ggml.model")
    architecture = gguf_metadata(reader, "general.architecture")
    supported = kind in VOCABULARY_BUILDERS and not (
        kind == "llama" and architecture in _UNSUPPORTED_SENTENCEPIECE_ARCHITECTURES)
    if not supported:
        raise TokenizerError(f"GGUF file {str(path)!r} has a {kind!r} tokenizer for architecture {architecture!r}; "
                             f"supported: byte-level BPE ('gpt2') and sentencepiece BPE ('llama') vocabularies, "
                             f"the latter not for {', '.join(_UNSUPPORTED_SENTENCEPIECE_ARCHITECTURES)}")
    tokens = gguf_metadata(reader, "tokenizer.ggml.tokens")
    backend = VOCABULARY_BUILDERS[kind](reader, tokens)
    _add_special_tokens(backend, tokens, gguf_metadata(reader, "tokenizer.ggml.token_type", []))
    special_tokens = {f"{name}_token": tokens[token_id] if token_id is not None else None
                      for name, token_id in (("bos", gguf_metadata(reader, "tokenizer.ggml.bos_token_id")),
                                             ("eos", gguf_metadata(reader, "tokenizer.ggml.eos_token_id")),
                                             ("pad", gguf_metadata(reader, "tokenizer.ggml.padding_token_id")))}
    return HFTokenizer(backend, special_tokens, gguf_metadata(reader, "tokenizer.chat_template"),
                       source=repr(str(path)))
