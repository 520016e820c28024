"""Math-Shepherd step labels: a step is as good as the share of the policy's continuations from it that verify.

For a completion of S steps, the prefix that ends at step k (the prompt and steps 0..k) is continued n times by
the policy; step k's soft label is the fraction of those continuations whose final answer verifies, its hard
label whether any does. The last step needs no continuation: the completion's own verdict labels it.
`step_prefixes` lays the prefixes out as left-padded prompts for the compiled sampler (`generate` with
group_size n), `label_steps` turns the continuations' verdicts into labels, `monte_carlo_step_labels` does both
around the sampler and a verifier.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rlreason.config import ModelConfig
from rlreason.parallel.rules import AXIS_RULES, Rules
from rlreason.sampling.sampler import SamplingParams
from rlreason.search.continuation import sample_rows
from rlreason.search.steps import Steps, split_steps
from rlreason.tokenizers import Tokenizer
from rlreason.verifiers.bridge import detokenize


class StepLabels(NamedTuple):
    soft: jax.Array  # [B, S] float32: share of verified continuations; NaN past a completion's last step
    hard: jax.Array  # [B, S] bool: some continuation verified; False past the last step
    valid: jax.Array  # [B, S] bool: step k exists (k < the completion's step count)


def step_prefixes(prompt_tokens: jax.Array, prompt_mask: jax.Array, completion: jax.Array, steps: Steps,
                  max_steps: int) -> tuple[jax.Array, jax.Array]:
    """The prompt followed by steps 0..k of its completion, for k < max_steps, as left-padded prompts.

    prompt_tokens, prompt_mask [B, Tp] (left-padded), completion [B, T], `steps` from `split_steps` on it.
    Returns tokens and mask [B * max_steps, Tp + T], row b * max_steps + k for step k of completion b (a step
    past the completion's last holds the whole completion; `label_steps` ignores it).
    """
    batch, prompt_length = prompt_tokens.shape
    step = jnp.arange(max_steps)[None, :, None]
    kept = (steps.step_of[:, None, :] >= 0) & (steps.step_of[:, None, :] <= step)  # [B, S, T]
    tokens = jnp.concatenate([jnp.broadcast_to(prompt_tokens[:, None], (batch, max_steps, prompt_length)),
                              jnp.broadcast_to(completion[:, None], kept.shape)], axis=-1)
    mask = jnp.concatenate([jnp.broadcast_to(prompt_mask.astype(bool)[:, None], (batch, max_steps, prompt_length)),
                            kept], axis=-1)
    # Left-pad: a stable sort on the mask moves the dropped tail in front and keeps the tokens' order.
    order = jnp.argsort(mask, axis=-1, stable=True)
    width = tokens.shape[-1]
    return (jnp.take_along_axis(tokens, order, -1).reshape(-1, width),
            jnp.take_along_axis(mask, order, -1).reshape(-1, width))


def label_steps(continuation_verified: jax.Array, step_count: jax.Array, completion_verified: jax.Array) -> StepLabels:
    """continuation_verified [B, S, n] bool (continuation j from the prefix ending at step k verified),
    step_count [B] (`Steps.count`), completion_verified [B] bool (the completion's own verdict)."""
    step = jnp.arange(continuation_verified.shape[1])[None, :]
    valid = step < step_count[:, None]
    last = step == step_count[:, None] - 1
    soft = jnp.where(last, completion_verified[:, None].astype(jnp.float32),
                     jnp.mean(continuation_verified.astype(jnp.float32), axis=-1))
    hard = jnp.where(last, completion_verified[:, None], jnp.any(continuation_verified, axis=-1))
    return StepLabels(soft=jnp.where(valid, soft, jnp.nan), hard=hard & valid, valid=valid)


def monte_carlo_step_labels(params, cfg: ModelConfig, tokenizer: Tokenizer, prompt_tokens: np.ndarray,
                            prompt_mask: np.ndarray, completion: np.ndarray, completion_mask: np.ndarray,
                            is_delimiter: np.ndarray, verify: Callable[[int, str], bool], max_steps: int,
                            num_rollouts: int, sampling: SamplingParams, rng: jax.Array,
                            mesh: Mesh | None = None, rules: Rules = AXIS_RULES) -> tuple[Steps, StepLabels]:
    """Labels every step of completions [B, T] by `num_rollouts` continuations of its prefix, drawn in one batch
    by the compiled sampler (a key per prefix, so a prefix's continuations do not depend on the batch), its rows
    split over `mesh` by `rules` when a mesh is given (params placed by the caller).

    `verify(b, text)` says whether `text`, a whole completion of prompt b (its first steps and a continuation,
    decoded together from their token ids), is right. Steps past `max_steps` are not labelled.
    """
    steps = split_steps(jnp.asarray(completion), jnp.asarray(completion_mask), jnp.asarray(is_delimiter))
    tokens, mask = step_prefixes(prompt_tokens, prompt_mask, completion, steps, max_steps)
    keys = jax.random.split(rng, tokens.shape[0])
    rollouts = sample_rows(params, cfg, tokens, mask, keys, sampling, num_rollouts, tokenizer.stop_ids,
                           tokenizer.pad_id, mesh, rules)
    step_of = np.asarray(steps.step_of)
    continuations, continuation_mask = np.asarray(rollouts.tokens), np.asarray(rollouts.completion_mask).astype(bool)
    batch = completion.shape[0]
    verified = np.zeros((batch, max_steps, num_rollouts), bool)
    for b in range(batch):
        for k in range(min(max_steps, int(steps.count[b]) - 1)):  # the last step is labelled by its completion
            first_steps = completion[b][(step_of[b] >= 0) & (step_of[b] <= k)].tolist()
            for j in range(num_rollouts):
                row = (b * max_steps + k) * num_rollouts + j
                ids = np.asarray(first_steps + continuations[row][continuation_mask[row]].tolist())
                verified[b, k, j] = verify(b, detokenize(tokenizer, ids, np.ones(len(ids), bool)))
    completion_verified = np.array([verify(b, detokenize(tokenizer, completion[b], completion_mask[b]))
                                    for b in range(batch)])
    return steps, label_steps(verified, steps.count, completion_verified)
