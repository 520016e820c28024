"""`r1_format` and `exact_answer` computed on token ids in pure JAX, with no host callback.

Each gives the same reward as its text version applied to the detokenized completion when
- each R1 tag is written as its single token, as `tokenizer.encode` writes it with the project's sentencepiece
  tokenizers (a tag spelled out of smaller pieces is a tag to the text version only), and
- decoding a sequence equals concatenating the decodes of its tokens, as with the project's sentencepiece
  tokenizers (no dummy prefix, identity normalization). The exception is byte-fallback pieces of multi-byte
  characters, which decode alone to U+FFFD: each is an opaque unit here, equal only to itself and never
  whitespace, so an answer written with them (characters the vocabulary lacks) never equals a gold answer,
  where the text version may find it equal.
Ids outside the tokenizer's vocabulary (a model head wider than the vocabulary) read as U+FFFD, as in the text.

To match the text versions, answers are compared as Unicode code points, not as token ids: every token is
looked up in a table of its characters (`TokenVocab.units`, [V, U]), the gold answer is decoded in the graph
from the step's gold bytes (`gold_answer_units`), and both are normalized like `canonical_answer`. Cost:
O(B · (T · U + Lg)) per call, U the longest token's length, Lg the gold row's width.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlreason.tokenizers.base import REASONING_TAGS, Tokenizer

OUT_OF_VOCAB_CHAR = "\ufffd"
_PAD_UNIT = -1  # after the end of a token's or an answer's characters; opaque tokens use -(id + 2)
_SPACE, _MINUS, _ZERO, _NINE = (ord(c) for c in " -09")
# Every code point str.split() splits on (none is above U+3000).
_WHITESPACE = np.asarray([code for code in range(0x3001) if chr(code).isspace()], np.int32)
# A gold row (rlreason.verifiers.golds) starts with this, its JSON keys sorted; the answer string follows.
_GOLD_PREFIX = np.frombuffer(b'{"answer":"', np.uint8)
# JSON's one-character escapes: the byte after the backslash -> the code point it stands for.
_JSON_ESCAPES = {ord('"'): ord('"'), ord("\\"): ord("\\"), ord("/"): ord("/"), ord("b"): 8, ord("f"): 12,
                 ord("n"): 10, ord("r"): 13, ord("t"): 9}


class TokenVocab(NamedTuple):
    """Per-token tables for the token-level rewards (a pytree of arrays: pass it to jitted functions).

    Rows are token ids; the last row stands for every id outside the vocabulary (V = vocab size + 1).
    """

    tag_ids: jax.Array  # int32 [4]: <think>, </think>, <answer>, </answer>
    blank: jax.Array  # bool [V]: the token's text is empty (pad, EOS) or only whitespace
    units: jax.Array  # int32 [V, U]: the token's text as code points, _PAD_UNIT after its end
    unit_counts: jax.Array  # int32 [V]


def token_vocab(tokenizer: Tokenizer) -> TokenVocab:
    """Builds the tables from `tokenizer` once, on the host. Raises TokenizerError if a tag is not one token."""
    texts = [tokenizer.decode([token_id]) for token_id in range(tokenizer.vocab_size)] + [OUT_OF_VOCAB_CHAR]
    unit_lists = [[-(token_id + 2)] if text == OUT_OF_VOCAB_CHAR and token_id < tokenizer.vocab_size
                  else [ord(char) for char in text] for token_id, text in enumerate(texts)]
    units = np.full((len(texts), max(map(len, unit_lists))), _PAD_UNIT, np.int32)
    for token_id, token_units in enumerate(unit_lists):
        units[token_id, :len(token_units)] = token_units
    return TokenVocab(
        tag_ids=jnp.asarray([tokenizer.single_token_id(tag) for tag in REASONING_TAGS], jnp.int32),
        blank=jnp.asarray([not text.strip() for text in texts]),
        units=jnp.asarray(units),
        unit_counts=jnp.asarray([len(token_units) for token_units in unit_lists], jnp.int32))


def _vocab_rows(tokens: jax.Array, vocab: TokenVocab) -> jax.Array:
    """Table rows of `tokens` [B, T]: the token id, or the out-of-vocabulary row."""
    out_of_vocab = vocab.blank.shape[0] - 1
    return jnp.where((tokens >= 0) & (tokens < out_of_vocab), tokens, out_of_vocab)


def _tag_positions(tokens: jax.Array, mask: jax.Array, tag_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For each tag in `tag_ids` [N]: its first position [B, N] inside `mask` and whether it occurs exactly once
    there [B, N]. tokens, mask: [B, T]."""
    hits = (tokens[:, :, None] == tag_ids) & mask[:, :, None]
    return jnp.argmax(hits, axis=1), jnp.sum(hits, axis=1) == 1


def _in_order(positions: jax.Array) -> jax.Array:
    """[B] True where the positions [B, N] strictly increase."""
    return jnp.all(positions[:, 1:] > positions[:, :-1], axis=1)


def _between(positions: jax.Array, first: int, last: int, length: int, inclusive: bool) -> jax.Array:
    """[B, length] mask of the positions from positions[:, first] to positions[:, last] (ends included or not)."""
    t = jnp.arange(length)
    start, end = positions[:, first:first + 1], positions[:, last:last + 1]
    return (t >= start) & (t <= end) if inclusive else (t > start) & (t < end)


def format_reward_tokens(tokens: jax.Array, mask: jax.Array, vocab: TokenVocab) -> jax.Array:
    """`r1_format` on token ids: 1.0 where each tag token occurs once inside `mask`, in order, and every masked
    token outside `<think>…</think>` and `<answer>…</answer>` is blank; else 0.0.

    tokens: int32 [B, T]; mask: [B, T] (bool or 0/1: the completion mask, EOS included). Returns float32 [B].
    """
    mask = mask.astype(bool)
    positions, once = _tag_positions(tokens, mask, vocab.tag_ids)
    length = tokens.shape[1]
    tagged = (_between(positions, 0, 1, length, inclusive=True) | _between(positions, 2, 3, length, inclusive=True))
    outside_is_blank = jnp.all(~mask | tagged | vocab.blank[_vocab_rows(tokens, vocab)], axis=1)
    return (jnp.all(once, axis=1) & _in_order(positions) & outside_is_blank).astype(jnp.float32)


def _compact(values: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Moves the kept entries of each row to its front, in order, padding with _PAD_UNIT.
    values, keep: [B, N]. Returns (values [B, N], kept counts [B])."""
    batch, width = values.shape
    destination = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, width)  # width: out of bounds, dropped
    compacted = jnp.full_like(values, _PAD_UNIT).at[jnp.arange(batch)[:, None], destination].set(values, mode="drop")
    return compacted, jnp.sum(keep, axis=1)


def _span_units(tokens: jax.Array, span: jax.Array, vocab: TokenVocab) -> tuple[jax.Array, jax.Array]:
    """The characters of the tokens in `span` (bool [B, T]), in order: (code points int32 [B, T·U], lengths [B])."""
    batch = tokens.shape[0]
    rows = _vocab_rows(tokens, vocab)
    present = (jnp.arange(vocab.units.shape[1]) < vocab.unit_counts[rows][..., None]) & span[..., None]
    return _compact(vocab.units[rows].reshape(batch, -1), present.reshape(batch, -1))


def _canonical(units: jax.Array, length: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Code points [B, N] of lengths [B] normalized like `answers.canonical_answer`: whitespace runs collapsed
    to one space and trimmed, an integer's leading zeros dropped. Returns (code points [B, N], lengths [B])."""
    index = jnp.arange(units.shape[1])

    valid = index < length[:, None]
    space = valid & jnp.isin(units, _WHITESPACE)
    word = valid & ~space
    word_before = jnp.pad(word[:, :-1], ((0, 0), (1, 0)))
    words_after = jnp.sum(word, axis=1, keepdims=True) - jnp.cumsum(word, axis=1)
    # " ".join(text.split()): the first space of each run between two words survives, as a plain space.
    keep = word | (space & word_before & (words_after > 0))
    units, length = _compact(jnp.where(space, _SPACE, units), keep)

    valid = index < length[:, None]
    signed = units[:, :1] == _MINUS
    digits = valid & (index >= signed)
    is_digit = (units >= _ZERO) & (units <= _NINE)
    is_integer = jnp.all(~digits | is_digit, axis=1, keepdims=True) & (length[:, None] > signed)
    zeros_so_far = jnp.cumprod(~digits | (units == _ZERO), axis=1).astype(bool)
    leading_zero = is_integer & digits & zeros_so_far & (index < length[:, None] - 1)
    return _compact(units, valid & ~leading_zero)


def gold_answer_units(gold_bytes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The answer of each gold row (`golds.encode_golds`: UTF-8 JSON, zero-padded) as code points, decoded in
    the graph: its UTF-8 sequences and JSON escapes (which JSON writes only for `"`, `\\` and control characters,
    the answer written with ensure_ascii=False) undone.

    gold_bytes: uint8 [B, Lg]. Returns (code points int32 [B, Lg], lengths int32 [B]); length 0 for a row that
    holds no gold (all zeros).
    """
    rows = gold_bytes.astype(jnp.int32)
    has_prefix = jnp.all(rows[:, :_GOLD_PREFIX.size] == _GOLD_PREFIX, axis=1)
    escapes = np.full(256, _PAD_UNIT, np.int32)
    escapes[list(_JSON_ESCAPES)] = list(_JSON_ESCAPES.values())
    hex_digit = np.full(256, 0, np.int32)
    for digit, code in enumerate(b"0123456789abcdef"):
        hex_digit[code] = hex_digit[ord(chr(code).upper())] = digit
    escapes, hex_digit = jnp.asarray(escapes), jnp.asarray(hex_digit)
    # Per row: mode (text, after a backslash, inside \uXXXX, ended at the closing quote), the bytes or hex
    # digits still to read for the current code point, and its value so far.
    text, escape, unicode, ended = range(4)

    def read(carry, byte):
        mode, pending, value = carry
        lead = jnp.where(byte >= 0xF0, 3, jnp.where(byte >= 0xE0, 2, jnp.where(byte >= 0xC0, 1, 0)))
        in_text, continuation = mode == text, (byte & 0xC0) == 0x80
        text_value = jnp.where(continuation, (value << 6) | (byte & 0x3F),
                               jnp.where(lead > 0, byte & (0x3F >> lead), byte))
        text_pending = jnp.where(continuation, pending - 1, lead)
        hex_value, hex_pending = value * 16 + hex_digit[byte], pending - 1
        emit = jnp.where(in_text, (byte != ord('"')) & (byte != ord("\\")) & (text_pending == 0),
                         jnp.where(mode == escape, byte != ord("u"), (mode == unicode) & (hex_pending == 0)))
        unit = jnp.where(in_text, text_value, jnp.where(mode == escape, escapes[byte], hex_value))
        next_mode = jnp.where(in_text, jnp.where(byte == ord('"'), ended, jnp.where(byte == ord("\\"), escape, text)),
                              jnp.where(mode == escape, jnp.where(byte == ord("u"), unicode, text),
                                        jnp.where((mode == unicode) & (hex_pending == 0), text, mode)))
        next_pending = jnp.where(in_text, text_pending,
                                 jnp.where(mode == escape, 4, jnp.where(mode == unicode, hex_pending, 0)))
        next_value = jnp.where(in_text, text_value, jnp.where(mode == unicode, hex_value, 0))
        return (next_mode, next_pending, next_value), (unit, emit & (mode != ended))

    body = rows[:, _GOLD_PREFIX.size:]
    start = jnp.where(has_prefix, text, ended)
    zeros = jnp.zeros_like(start)
    _, (units, emitted) = jax.lax.scan(read, (start, zeros, zeros), body.T)
    return _compact(units.T, emitted.T)


def exact_answer_tokens(tokens: jax.Array, mask: jax.Array, gold_bytes: jax.Array, vocab: TokenVocab) -> jax.Array:
    """`exact_answer` on token ids: 1.0 where the tokens between the only `<answer>` and the only `</answer>`
    inside `mask` spell the gold answer after normalization, else 0.0; NaN where the gold answer is empty.

    tokens: int32 [B, T]; mask: [B, T]; gold_bytes: uint8 [B, Lg] (`golds.encode_golds`). Returns float32 [B].
    """
    positions, once = _tag_positions(tokens, mask.astype(bool), vocab.tag_ids[2:])
    found = jnp.all(once, axis=1) & _in_order(positions)
    answer_span = _between(positions, 0, 1, tokens.shape[1], inclusive=False) & found[:, None]
    answer, answer_length = _canonical(*_span_units(tokens, answer_span, vocab))
    gold, gold_length = _canonical(*gold_answer_units(gold_bytes))
    width = min(answer.shape[1], gold.shape[1])  # equal lengths fit in both
    equal = found & (answer_length == gold_length) & jnp.all(answer[:, :width] == gold[:, :width], axis=1)
    return jnp.where(gold_length == 0, jnp.nan, equal.astype(jnp.float32))


# The reward functions that have a token-level version (grpo.scoring: jax):
# name -> fn(completion_tokens [B, T], completion_mask [B, T], gold_bytes [B, Lg], vocab) -> float32 [B].
TOKEN_REWARDS: dict[str, Callable[..., jax.Array]] = {
    "r1_format": lambda tokens, mask, gold_bytes, vocab: format_reward_tokens(tokens, mask, vocab),
    "exact_answer": exact_answer_tokens,
}


def make_token_scorer(tokenizer: Tokenizer, names: Sequence[str]) -> Callable[..., jax.Array]:
    """The pure-JAX counterpart of `bridge.make_scorer`, for functions in TOKEN_REWARDS: a program that scores
    with it holds no host callback, so JAX's persistent compilation cache can keep it.

    Returns `score(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes)` -> float32 [B, K],
    one column per name, NaN on rows without a gold (all-zero gold bytes), as the text scorer gives. Raises
    ValueError naming a function without a token-level version.
    """
    missing = [name for name in names if name not in TOKEN_REWARDS]
    if missing:
        raise ValueError(f"no token-level version of {', '.join(missing)}; those with one: {', '.join(TOKEN_REWARDS)}")
    vocab = token_vocab(tokenizer)

    def score(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes):
        columns = jnp.stack([TOKEN_REWARDS[name](completion_tokens, completion_mask, gold_bytes, vocab)
                             for name in names], axis=-1)
        has_gold = jnp.any(gold_bytes != 0, axis=-1, keepdims=True)
        return jnp.where(has_gold, columns, jnp.nan)

    return score
