"""Continuing partial solutions through the compiled sampler: what step-level beam search and MCTS share.

A partial solution is a prompt's token ids followed by the steps written so far; a batch of them is left-padded
to one width (so the sampler compiles once per row count), continued `group_size` times each with a key per
row, and the sampled tokens come back per row with their log-probs under the sampling distribution.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from rlreason.config import ModelConfig
from rlreason.data.encoding import left_pad
from rlreason.models.transformer import Layout, laid_out
from rlreason.parallel.rules import AXIS_RULES, Rules, model_layout, put_rows
from rlreason.sampling.sampler import Rollout, SamplingParams, generate_groups


def compiled_sampler(mesh: Mesh | None, rules: Rules = AXIS_RULES):
    """generate_groups compiled for rows split over `mesh`'s batch axes by `rules`, each device running its own
    rows through the model (rlreason.parallel.rules.model_layout); None: no layout. cfg, sampling, group_size,
    stop_ids and pad_id are static: one program per mesh, rule table, row count and setting."""
    return _compiled_sampler(mesh, tuple(rules.items()))


@functools.cache
def _compiled_sampler(mesh: Mesh | None, rule_items: tuple):  # the rule table as items: a cache key
    layout = Layout() if mesh is None else model_layout(mesh, dict(rule_items))
    return jax.jit(laid_out(generate_groups, layout), static_argnums=(4, 5, 6, 7, 8))


class Continuation(NamedTuple):
    ids: list[int]  # the sampled tokens, up to and including the stop token that ended them (if one did)
    logprobs: np.ndarray  # [len(ids)] float32: their log-probs under softmax(logits / temperature)


def sample_rows(params, cfg: ModelConfig, prompt_tokens, prompt_mask, keys: jax.Array, sampling: SamplingParams,
                group_size: int, stop_ids: tuple[int, ...], pad_id: int, mesh: Mesh | None = None,
                rules: Rules = AXIS_RULES) -> Rollout:
    """generate_groups of left-padded prompt rows [R, W] (numpy or jax) by the compiled sampler, with a key per
    row (`keys` [R]); on `mesh` the rows are split over its batch axes (by `rules`) first (params placed by the
    caller)."""
    if mesh is not None:
        prompt_tokens, prompt_mask, keys = put_rows((prompt_tokens, prompt_mask, keys), mesh, rules)
    return compiled_sampler(mesh, rules)(params, prompt_tokens, prompt_mask, keys, cfg, sampling, group_size,
                                         tuple(stop_ids), pad_id)


def padded_rows(sequences: list[list[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of each sequence left-padded to `width`: (tokens int32 [R, width], mask int32 [R, width])."""
    rows = [left_pad(ids, width, pad_id) for ids in sequences]
    return np.stack([tokens for tokens, _ in rows]), np.stack([mask for _, mask in rows])


def continue_sequences(params, cfg: ModelConfig, sequences: list[list[int]], width: int, keys: jax.Array,
                       sampling: SamplingParams, group_size: int, stop_ids: tuple[int, ...], pad_id: int,
                       mesh: Mesh | None = None, rules: Rules = AXIS_RULES) -> list[Continuation]:
    """`group_size` continuations of each of R sequences (each at most `width` tokens), R * group_size of them,
    groups contiguous. `keys` [R]: continuation j of sequence r is drawn from fold_in(keys[r], j), so it does
    not depend on the rest of the batch. `stop_ids` end a continuation; at most `sampling.max_new_tokens` each.

    `mesh`: the rows are split over its batch axes by `rules` (params placed by the caller); None: wherever they
    are.
    """
    tokens, mask = padded_rows(sequences, width, pad_id)
    rollout = sample_rows(params, cfg, tokens, mask, keys, sampling, group_size, stop_ids, pad_id, mesh, rules)
    new_tokens, logprobs = np.asarray(rollout.tokens), np.asarray(rollout.logprobs)
    new_mask = np.asarray(rollout.completion_mask).astype(bool)
    return [Continuation(new_tokens[row][new_mask[row]].tolist(), logprobs[row][new_mask[row]])
            for row in range(len(sequences) * group_size)]
