"""The host-callback bridge: text reward functions called from inside a compiled step.

`make_scorer` returns a jit-compatible function that sends token ids and gold bytes to the host with
`jax.pure_callback`, detokenizes, and runs the text verifiers there. Without a mesh, XLA gathers the whole batch
to one device and one host scores it. With a mesh, the callback runs under `jax.shard_map`, so each device (hence
each host) scores only its own rows: rows are split over ("data", "fsdp"), and over "tensor" too when the row
count allows; otherwise each tensor replica scores its rows again (same numbers, duplicate work).

`vmap_method="broadcast_all"`: under `jax.vmap` the callback runs once, with every argument broadcast to the
batched leading dims, which the host function folds into rows.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from rlreason.config import RewardConfig
from rlreason.tokenizers.base import Tokenizer
from rlreason.verifiers.base import RewardFunction, get_reward_fn
from rlreason.verifiers.golds import decode_gold
from rlreason.verifiers.isolation import WorkerPool, shared_pool
from rlreason.verifiers.scoring import score_texts
from rlreason.verifiers.tokens import OUT_OF_VOCAB_CHAR

BATCH_AXES = ("data", "fsdp")
REPLICA_AXES = ("tensor",)

Scorer = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def detokenize(tokenizer: Tokenizer, ids: np.ndarray, mask: np.ndarray) -> str:
    """Text of the tokens of one row where `mask` is set. ids, mask: [T].

    Ids outside the vocabulary (a model head can be wider than its tokenizer's vocabulary) read as U+FFFD;
    sentencepiece would drop them silently, turning "4", <junk id>, "2" into a correct "42".
    """
    kept = np.asarray(ids)[np.asarray(mask).astype(bool)].tolist()
    runs = itertools.groupby(kept, key=lambda token_id: 0 <= token_id < tokenizer.vocab_size)
    return "".join(tokenizer.decode(list(run)) if in_vocab else OUT_OF_VOCAB_CHAR * len(list(run))
                   for in_vocab, run in runs)


def _score_on_host(tokenizer: Tokenizer, reward_fns: tuple[RewardFunction, ...], pool: WorkerPool, timeout_s: float,
                   prompt_tokens: np.ndarray, prompt_mask: np.ndarray, completion_tokens: np.ndarray,
                   completion_mask: np.ndarray, gold_bytes: np.ndarray) -> np.ndarray:
    """The callback body: arrays [..., B, width] in, rewards float32 [..., B, K] out (leading dims from vmap)."""
    def rows(array: np.ndarray) -> np.ndarray:
        return np.asarray(array).reshape(-1, array.shape[-1])

    prompts = [detokenize(tokenizer, *row) for row in zip(rows(prompt_tokens), rows(prompt_mask))]
    completions = [detokenize(tokenizer, *row) for row in zip(rows(completion_tokens), rows(completion_mask))]
    golds = [decode_gold(row) for row in rows(gold_bytes)]
    scored = [i for i, gold in enumerate(golds) if gold is not None]
    scores = np.full((len(golds), len(reward_fns)), np.nan, np.float32)
    scores[scored] = score_texts(reward_fns, [prompts[i] for i in scored], [completions[i] for i in scored],
                                 [golds[i][0] for i in scored], [golds[i][1] for i in scored], pool, timeout_s)
    return scores.reshape(*completion_tokens.shape[:-1], len(reward_fns))


def scoring_row_axes(mesh: Mesh, num_rows: int) -> tuple[str, ...]:
    """The mesh axes the rows are split over for scoring: BATCH_AXES, plus REPLICA_AXES when they divide too."""
    batch_shards = math.prod(mesh.shape[axis] for axis in BATCH_AXES)
    if num_rows % batch_shards:
        raise ValueError(f"{num_rows} rows cannot be split over mesh axes {BATCH_AXES} of sizes "
                         f"{[mesh.shape[axis] for axis in BATCH_AXES]}: the row count must be a multiple of "
                         f"{batch_shards}")
    all_shards = batch_shards * math.prod(mesh.shape[axis] for axis in REPLICA_AXES)
    return BATCH_AXES + REPLICA_AXES if num_rows % all_shards == 0 else BATCH_AXES


def make_scorer(tokenizer: Tokenizer, rewards: Sequence[RewardConfig], timeout_s: float, mesh: Mesh | None = None,
                pool: WorkerPool | None = None) -> Scorer:
    """A jit-compatible `score(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes)`.

    prompt_tokens, prompt_mask: [B, Tp] (left-padded prompts); completion_tokens, completion_mask: [B, Tc];
    gold_bytes: uint8 [B, Lg] from `golds.encode_golds`. Returns float32 [B, K], one column per entry of
    `rewards` in order (weights are not applied: see `combine.combine_rewards`), NaN where a function does not
    apply or the gold row is all zeros. Each isolated verifier call is limited to `timeout_s` seconds.
    `pool` defaults to the process-wide `shared_pool` for the isolated functions' modules; its processes start on
    the first isolated call. Unknown reward names raise ValueError here, before anything is compiled.
    """
    reward_fns = tuple(get_reward_fn(reward.name) for reward in rewards)
    if pool is None:
        pool = shared_pool(tuple(sorted({reward.fn.__module__ for reward in reward_fns if reward.isolated})))
    score_on_host = functools.partial(_score_on_host, tokenizer, reward_fns, pool, timeout_s)

    def callback(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes):
        result = jax.ShapeDtypeStruct((*completion_tokens.shape[:-1], len(reward_fns)), jnp.float32)
        return jax.pure_callback(score_on_host, result, prompt_tokens, prompt_mask, completion_tokens,
                                 completion_mask, gold_bytes, vmap_method="broadcast_all")

    def score(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes):
        if mesh is None:
            return callback(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes)
        rows = PartitionSpec(scoring_row_axes(mesh, completion_tokens.shape[0]))
        return jax.shard_map(callback, mesh=mesh, in_specs=(rows,) * 5, out_specs=rows)(
            prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes)

    return score
