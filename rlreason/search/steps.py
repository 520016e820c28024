"""Completions as reasoning steps, on token ids and inside `jax.jit`.

A step is a run of completion tokens that ends at a delimiter token (one whose text holds the delimiter: a
newline for chat models, ", " between the demo's worked columns) or at the completion's last token. Runs of
delimiter tokens and delimiters before any content end no step of their own: a blank line ("\\n\\n" as two
tokens) or a completion that opens with a newline does not make an empty step. Everything that labels, scores or
searches steps reads `Steps`, so they agree on where a step ends.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlreason.tokenizers import Tokenizer


class Steps(NamedTuple):
    """The steps of a batch of completions [B, T] (a pytree, so it passes through jit and shard_map)."""

    step_of: jax.Array  # [B, T] int32: the index of the step a token belongs to, -1 outside every step
    ends: jax.Array  # [B, T] bool: the last token of each step
    count: jax.Array  # [B] int32: steps in each completion


def delimiter_table(tokenizer: Tokenizer, delimiter: str) -> np.ndarray:
    """[V] bool: the tokens whose text holds `delimiter` (never a special token). BPE vocabularies hold a
    newline in many pieces (".\\n", "\\n\\n"), so a token-level split must look at every piece's text."""
    if not delimiter:
        raise ValueError("a step delimiter must be a non-empty string")
    return np.array([not tokenizer.is_special(token) and delimiter in tokenizer.decode([token])
                     for token in range(tokenizer.vocab_size)], dtype=bool)


def _next(flags: jax.Array) -> jax.Array:
    """flags[:, t + 1] at t, False past the end; flags [B, T] bool."""
    return jnp.pad(flags[:, 1:], ((0, 0), (0, 1)))


def split_steps(tokens: jax.Array, completion_mask: jax.Array, is_delimiter: jax.Array) -> Steps:
    """Steps of completions `tokens` [B, T] int32 whose completion tokens are `completion_mask` [B, T] bool (one
    contiguous run per row, as the sampler writes them); `is_delimiter` [V] bool from `delimiter_table`."""
    mask = completion_mask.astype(bool)
    delimiter = jnp.asarray(is_delimiter)[tokens] & mask
    last_token = mask & ~_next(mask)
    candidate = (delimiter & ~_next(delimiter)) | last_token
    # A candidate ends a step only if content (a non-delimiter token) came since the previous candidate: the
    # content count is non-decreasing, so its running maximum at candidates is its value at the latest one.
    content = jnp.cumsum(mask & ~delimiter, axis=1)
    at_candidates = jax.lax.cummax(jnp.where(candidate, content, 0), axis=1)
    before = jnp.pad(at_candidates[:, :-1], ((0, 0), (1, 0)))
    ends = candidate & (content > before)
    step_of = jnp.cumsum(ends, axis=1) - ends  # steps ended before this token
    count = jnp.sum(ends, axis=1)
    in_a_step = mask & (step_of < count[:, None])  # a completion of delimiters alone has no step
    return Steps(step_of=jnp.where(in_a_step, step_of, -1).astype(jnp.int32), ends=ends,
                 count=count.astype(jnp.int32))
