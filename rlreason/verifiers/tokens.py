"""`r1_format` and `exact_answer` computed on token ids in pure JAX, with no host callback.

Each gives the same reward as its text version applied to the detokenized completion when
- each R1 tag is written as its single token, as `tokenizer.encode` writes it with the project's sentencepiece
  tokenizers (a tag spelled out of smaller pieces is a tag to the text version only), and
- decoding a sequence equals concatenating the decodes of its tokens, as with the project's sentencepiece
  tokenizers (no dummy prefix, identity normalization). The exception is byte-fallback pieces of multi-byte
  characters, which decode alone to U+FFFD: each is an opaque unit here, equal only to itself and never
  whitespace, so text made of them compares the same whenever both sides are encoded by the tokenizer.
Ids outside the tokenizer's vocabulary (a model head wider than the vocabulary) read as U+FFFD on both sides.

To match the text versions exactly, answers are compared as Unicode code points, not as token ids: every token
is looked up in a table of its characters (`TokenVocab.units`, [V, U]), and the characters inside the answer
span are normalized like `canonical_answer`. Cost: O(B · T · U) per call, U the longest token's length.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlreason.tokenizers.base import REASONING_TAGS, Tokenizer

OUT_OF_VOCAB_CHAR = "\ufffd"
_PAD_UNIT = -1  # after the end of a token's or an answer's characters; opaque tokens use -(id + 2)
_SPACE, _MINUS, _ZERO, _NINE = (ord(c) for c in " -09")


class TokenVocab(NamedTuple):
    """Per-token tables for the token-level rewards (a pytree of arrays: pass it to jitted functions).

    Rows are token ids; the last row stands for every id outside the vocabulary (V = vocab size + 1).
    """

    tag_ids: jax.Array  # int32 [4]: <think>, </think>, <answer>, </answer>
    blank: jax.Array  # bool [V]: the token's text is empty (pad, EOS) or only whitespace
    units: jax.Array  # int32 [V, U]: the token's text as code points, _PAD_UNIT after its end
    unit_counts: jax.Array  # int32 [V]
    space_units: jax.Array  # int32 [S]: the whitespace code points that occur in the vocabulary


def token_vocab(tokenizer: Tokenizer) -> TokenVocab:
    """Builds the tables from `tokenizer` once, on the host. Raises TokenizerError if a tag is not one token."""
    texts = [tokenizer.decode([token_id]) for token_id in range(tokenizer.vocab_size)] + [OUT_OF_VOCAB_CHAR]
    unit_lists = [[-(token_id + 2)] if text == OUT_OF_VOCAB_CHAR and token_id < tokenizer.vocab_size
                  else [ord(char) for char in text] for token_id, text in enumerate(texts)]
    units = np.full((len(texts), max(map(len, unit_lists))), _PAD_UNIT, np.int32)
    for token_id, token_units in enumerate(unit_lists):
        units[token_id, :len(token_units)] = token_units
    # The plain space is always listed, so that the array is never empty.
    space_units = sorted({ord(char) for text in texts for char in text if char.isspace()} | {_SPACE})
    return TokenVocab(
        tag_ids=jnp.asarray([tokenizer.single_token_id(tag) for tag in REASONING_TAGS], jnp.int32),
        blank=jnp.asarray([not text.strip() for text in texts]),
        units=jnp.asarray(units),
        unit_counts=jnp.asarray([len(token_units) for token_units in unit_lists], jnp.int32),
        space_units=jnp.asarray(space_units, jnp.int32))


def encode_gold_tokens(tokenizer: Tokenizer, answers: Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Gold answers as right-padded token ids int32 [B, max_tokens] and mask bool [B, max_tokens]; raises
    ValueError naming the first answer longer than `max_tokens` tokens."""
    ids = np.full((len(answers), max_tokens), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(answers), max_tokens), bool)
    for row, answer in enumerate(answers):
        encoded = tokenizer.encode(answer)
        if len(encoded) > max_tokens:
            raise ValueError(f"gold answer {row} ({answer[:40]!r}) takes {len(encoded)} tokens, "
                             f"more than max_tokens={max_tokens}")
        ids[row, :len(encoded)], mask[row, :len(encoded)] = encoded, True
    return ids, mask


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


def _canonical_units(tokens: jax.Array, span: jax.Array, vocab: TokenVocab) -> tuple[jax.Array, jax.Array]:
    """The characters of the tokens in `span`, normalized like `answers.canonical_answer`: whitespace runs
    collapsed to one space and trimmed, an integer's leading zeros dropped.

    tokens: int32 [B, T]; span: bool [B, T]. Returns (code points int32 [B, T·U], lengths int32 [B]).
    """
    batch = tokens.shape[0]
    rows = _vocab_rows(tokens, vocab)
    present = (jnp.arange(vocab.units.shape[1]) < vocab.unit_counts[rows][..., None]) & span[..., None]
    units, length = _compact(vocab.units[rows].reshape(batch, -1), present.reshape(batch, -1))
    index = jnp.arange(units.shape[1])

    valid = index < length[:, None]
    space = valid & jnp.isin(units, vocab.space_units)
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


def exact_answer_tokens(tokens: jax.Array, mask: jax.Array, gold_tokens: jax.Array, gold_mask: jax.Array,
                        vocab: TokenVocab) -> jax.Array:
    """`exact_answer` on token ids: 1.0 where the tokens between the only `<answer>` and the only `</answer>`
    inside `mask` spell the gold answer after normalization, else 0.0; NaN where the gold answer is empty.

    tokens: int32 [B, T]; mask: [B, T]; gold_tokens: int32 [B, Lg] with gold_mask [B, Lg] (`encode_gold_tokens`).
    Returns float32 [B].
    """
    positions, once = _tag_positions(tokens, mask.astype(bool), vocab.tag_ids[2:])
    found = jnp.all(once, axis=1) & _in_order(positions)
    answer_span = _between(positions, 0, 1, tokens.shape[1], inclusive=False) & found[:, None]
    answer, answer_length = _canonical_units(tokens, answer_span, vocab)
    gold, gold_length = _canonical_units(gold_tokens, gold_mask.astype(bool), vocab)
    width = min(answer.shape[1], gold.shape[1])  # equal lengths fit in both
    equal = found & (answer_length == gold_length) & jnp.all(answer[:, :width] == gold[:, :width], axis=1)
    return jnp.where(gold_length == 0, jnp.nan, equal.astype(jnp.float32))
