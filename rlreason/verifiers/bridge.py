"""The host-callback bridge: text reward functions called from inside a compiled step.

`make_scorer` returns a jit-compatible function that sends token ids and gold bytes to the host with
`jax.pure_callback`, detokenizes, and runs the text verifiers there. Without a mesh, XLA gathers the whole batch
to one device and one host scores it. With a mesh, the callback runs under `jax.shard_map`, so each device (hence
each host) scores only its own rows. The row layout comes from the `batch` entry of the rule table
(`rlreason.parallel.rules`): rows are split over its mesh axes as the step splits them; on the other mesh axes
(e.g. tensor) the devices hold the same rows, so they split those rows among themselves, each scores its part,
and an all-gather gives every replica the same scores. Every row is scored exactly once, so replicas never
disagree, even when a call is cut by a deadline on one host and not on another.

`vmap_method="broadcast_all"`: under `jax.vmap` the callback runs once, with every argument broadcast to the
batched leading dims, which the host function folds into rows.

Failures: calls that time out or whose worker dies score 0 and are counted; `take_verifier_metrics` reads the
counts after each step (summed over processes). A pool whose workers cannot start at all is an installation
problem: with `raise_pool_errors=False` the scorer records it and scores its rows 0, and `take_verifier_metrics`
raises `VerifierPoolError` on every process at the same point, so a multi-host run stops at once with one
clear message instead of one host dying inside a collective while the others wait for a heartbeat timeout.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec

from rlreason.config import GRPOConfig, RewardConfig
from rlreason.parallel.rules import AXIS_RULES, Rules, partition_spec
from rlreason.tokenizers.base import Tokenizer
from rlreason.verifiers.base import RewardFunction, get_reward_fn
from rlreason.verifiers.golds import decode_gold
from rlreason.verifiers.isolation import WorkerPool, shared_pool, take_shared_counts
from rlreason.verifiers.scoring import FAILED_CALL_REWARD, score_texts
from rlreason.verifiers.tokens import OUT_OF_VOCAB_CHAR

logger = logging.getLogger("rlreason.verifiers")

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


class VerifierPoolError(RuntimeError):
    """The verifier workers of some process of the run cannot start; every process raises it after the step."""


# Start-up errors of the pools behind scorers made with raise_pool_errors=False, for take_verifier_metrics.
_POOL_ERRORS: list[str] = []


def _score_on_host(tokenizer: Tokenizer, reward_fns: tuple[RewardFunction, ...], pool: WorkerPool, timeout_s: float,
                   deadline_s: float, raise_pool_errors: bool, prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                   completion_tokens: np.ndarray, completion_mask: np.ndarray, gold_bytes: np.ndarray) -> np.ndarray:
    """The callback body: arrays [..., B, width] in, rewards float32 [..., B, K] out (leading dims from vmap).
    Rows without a gold (all-zero gold bytes: padding) are not detokenized and score NaN."""
    def rows(array: np.ndarray) -> np.ndarray:
        return np.asarray(array).reshape(-1, array.shape[-1])

    golds = [decode_gold(row) for row in rows(gold_bytes)]
    scored = [i for i, gold in enumerate(golds) if gold is not None]
    prompts = [detokenize(tokenizer, *row) for row in zip(rows(prompt_tokens)[scored], rows(prompt_mask)[scored])]
    completions = [detokenize(tokenizer, *row)
                   for row in zip(rows(completion_tokens)[scored], rows(completion_mask)[scored])]
    scores = np.full((len(golds), len(reward_fns)), np.nan, np.float32)
    if scored:
        errors = None if raise_pool_errors else []
        scores[scored] = score_texts(reward_fns, prompts, completions, [golds[i][0] for i in scored],
                                     [golds[i][1] for i in scored], pool, timeout_s, deadline_s, errors)
        for error in errors or ():
            logger.error("%s; this step's isolated rewards score %s and the run stops after the step", error,
                         FAILED_CALL_REWARD)
            _POOL_ERRORS.append(error)
    return scores.reshape(*completion_tokens.shape[:-1], len(reward_fns))


def scoring_layout(mesh: Mesh, num_rows: int, rules: Rules = AXIS_RULES) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(row axes, replica axes): the mesh axes that split `num_rows` rows by the rule table's `batch` entry (as
    `partition_spec` places them), and the other mesh axes of size > 1, whose devices hold the same rows."""
    [entry] = partition_spec(("batch",), (num_rows,), mesh, rules)
    row_axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    replica_axes = tuple(axis for axis in mesh.axis_names if axis not in row_axes and mesh.shape[axis] > 1)
    return row_axes, replica_axes


def _split_over_replicas(score_rows: Callable, replica_axes: tuple[str, ...], replicas: int) -> Callable:
    """Inside shard_map: the R = `replicas` devices along `replica_axes` hold the same b rows; each scores
    ceil(b / R) of them (zero-padded: rows without a gold, not scored) and all get every score back.

    The scores come back by a psum of each replica's scores placed among zeros (x + 0 is exact, NaN included),
    which shard_map knows to be the same on every replica, unlike an all_gather."""
    def score(*arrays):
        rows = arrays[0].shape[0]
        share = -(-rows // replicas)
        start = jax.lax.axis_index(replica_axes) * share
        mine = [jax.lax.dynamic_slice_in_dim(jnp.pad(array, [(0, share * replicas - rows)] + [(0, 0)] *
                                                     (array.ndim - 1)), start, share) for array in arrays]
        scores = score_rows(*mine)
        placed = jax.lax.dynamic_update_slice_in_dim(jnp.zeros((share * replicas, *scores.shape[1:]), scores.dtype),
                                                     scores, start, axis=0)
        return jax.lax.psum(placed, replica_axes)[:rows]

    return score


def make_scorer(tokenizer: Tokenizer, rewards: Sequence[RewardConfig], timeout_s: float, mesh: Mesh | None = None,
                pool: WorkerPool | None = None, *, deadline_s: float = math.inf,
                memory_limit_mb: int = GRPOConfig.verifier_memory_mb, rules: Rules = AXIS_RULES,
                raise_pool_errors: bool = True) -> Scorer:
    """A jit-compatible `score(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes)`.

    prompt_tokens, prompt_mask: [B, Tp] (left-padded prompts); completion_tokens, completion_mask: [B, Tc];
    gold_bytes: uint8 [B, Lg] from `golds.encode_golds`. Returns float32 [B, K], one column per entry of
    `rewards` in order (weights are not applied: see `combine.combine_rewards`), NaN where a function does not
    apply or the gold row is all zeros. Each isolated verifier call is limited to `timeout_s` seconds, and all
    the calls of one callback (one device's rows) to `deadline_s` seconds; failed calls score 0.
    `pool` defaults to the process-wide `shared_pool` for the isolated functions' modules, its workers capped at
    `memory_limit_mb` MiB; its processes start on the first isolated call. `rules`: the rule table whose `batch`
    entry places the rows on `mesh`. `raise_pool_errors`: see the module docstring. Unknown reward names raise
    ValueError here, before anything is compiled.
    """
    reward_fns = tuple(get_reward_fn(reward.name) for reward in rewards)
    if pool is None:
        pool = shared_pool(tuple(sorted({reward.fn.__module__ for reward in reward_fns if reward.isolated})),
                           memory_limit_mb)
    score_on_host = functools.partial(_score_on_host, tokenizer, reward_fns, pool, timeout_s, deadline_s,
                                      raise_pool_errors)

    def callback(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes):
        result = jax.ShapeDtypeStruct((*completion_tokens.shape[:-1], len(reward_fns)), jnp.float32)
        return jax.pure_callback(score_on_host, result, prompt_tokens, prompt_mask, completion_tokens,
                                 completion_mask, gold_bytes, vmap_method="broadcast_all")

    def score(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes):
        if mesh is None:
            return callback(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes)
        row_axes, replica_axes = scoring_layout(mesh, completion_tokens.shape[0], rules)
        replicas = math.prod(mesh.shape[axis] for axis in replica_axes)
        body = _split_over_replicas(callback, replica_axes, replicas) if replicas > 1 else callback
        rows = PartitionSpec(row_axes or None)
        return jax.shard_map(body, mesh=mesh, in_specs=(rows,) * 5, out_specs=rows)(
            prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes)

    return score


def take_verifier_metrics() -> dict[str, float]:
    """The step metrics of the shared pools' failed calls since the last call, summed over every process:
    `verifier/timed_out_calls` and `verifier/killed_calls` (see `isolation.CallCounts`); resets them.

    A collective: every process must call it at the same point (after each step). Raises VerifierPoolError on
    every process when the workers of any process could not start during the step.
    """
    counts = take_shared_counts()
    failed_here = len(_POOL_ERRORS)
    _POOL_ERRORS.clear()
    local = np.asarray([counts.timed_out, counts.killed, failed_here], np.int64)
    per_process = local[None] if jax.process_count() == 1 else np.asarray(multihost_utils.process_allgather(local))
    failed = [process for process, row in enumerate(per_process) if row[2]]
    if failed:
        raise VerifierPoolError(
            f"the verifier worker processes of process(es) {failed} could not start (their error and traceback are "
            f"in that process's log; a worker imports rlreason.verifiers and the reward functions' modules, so "
            f"check that they import in this environment); the run stops, and running the same command again "
            f"resumes from the last checkpoint")
    timed_out, killed = per_process[:, :2].sum(axis=0).tolist()
    return {"verifier/timed_out_calls": float(timed_out), "verifier/killed_calls": float(killed)}
