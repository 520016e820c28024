"""Prefill, then KV-cache decoding in a `lax.while_loop` (one per cache segment) that stops once every row has
stopped.

Prompts are LEFT-padded: every row's last prompt token sits in the same slot, so one decode step writes
one cache column for the whole batch. Rotary positions count only real tokens, so a padded row sees the
same positions as it would alone. With tool turns (rlreason.sampling.tools) a row may spend decode iterations on
inserted observation tokens instead of sampled ones; every row still writes one slot per iteration.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlreason.config import ModelConfig, SamplingConfig
from rlreason.models.logprobs import logprobs_of, scale_logits
from rlreason.models.transformer import (Params, decode_weights, extend_cache, forward, prefill_for_rows,
                                         unembed, unstack_cache)
from rlreason.sampling.tools import ToolTurns, force_observations, initial_turns, queue_observations


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Static sampling settings (part of the compiled program's identity)."""

    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    decode_segments: int = 1  # the KV cache grows in this many parts (SamplingConfig.decode_segments)

    @classmethod
    def from_config(cls, cfg: SamplingConfig, temperature: float | None = None) -> "SamplingParams":
        return cls(max_new_tokens=cfg.max_completion_length,
                   temperature=cfg.temperature if temperature is None else temperature,
                   top_k=cfg.top_k, top_p=cfg.top_p, decode_segments=cfg.decode_segments)

    def segment_ends(self) -> tuple[int, ...]:
        """The completion length at the end of each cache segment: `decode_segments` equal parts (fewer if
        max_new_tokens is smaller), the last ending at max_new_tokens."""
        parts = min(self.decode_segments, self.max_new_tokens)
        return tuple(-(-self.max_new_tokens * (part + 1) // parts) for part in range(parts))


class Rollout(NamedTuple):
    """What sampling produced; B rows.

    prompt_tokens, prompt_mask: [B, Tp] left-padded prompts. tokens: [B, Tc] completions (pad after the stop
    token). logprobs: [B, Tc] log-probs of the sampled tokens under softmax(logits / temperature), 0 outside
    the mask and at observations. completion_mask: [B, Tc] 1 up to and including the first stop token
    (observations included). truncated: [B] True where no stop token came within Tc tokens.
    observation_mask: [B, Tc] 1 at the tool results inserted into the completion (all 0 without tools).
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    completion_mask: jax.Array
    truncated: jax.Array
    observation_mask: jax.Array


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Sets logits outside the top-k / nucleus to -inf. logits: [B, V] (already temperature-scaled)."""
    if top_k > 0:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p < 1.0:
        logits = jnp.where(logits < nucleus_threshold(logits, top_p), -jnp.inf, logits)
    return logits


def _ordered_key(values: jax.Array) -> jax.Array:
    """uint32 keys in the order of the float32 `values` (-inf lowest): the bit pattern, negatives flipped."""
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def nucleus_threshold(logits: jax.Array, top_p: float) -> jax.Array:
    """The smallest logit of each row's nucleus: the largest logit t whose tokens at or above it hold at least
    `top_p` of the probability. logits [B, V] -> [B, 1]. Keeping the logits >= t keeps every token whose more
    likely tokens hold less than top_p (ties at t included; the most likely token always).

    Found by bisection over the float32 bit patterns (32 rounds of a masked sum over V) instead of sorting the
    vocabulary for every sampled token.
    """
    probs = jax.nn.softmax(logits, axis=-1)
    keys = _ordered_key(logits)

    def halve(_, bounds):
        low, high = bounds  # mass(keys >= low) >= top_p > mass(keys >= high)
        middle = low + (high - low) // 2
        enough = jnp.sum(jnp.where(keys >= middle, probs, 0.0), axis=-1, keepdims=True) >= top_p
        return jnp.where(enough, middle, low), jnp.where(enough, high, middle)

    low = jnp.zeros((logits.shape[0], 1), jnp.uint32)  # below every key: all the mass
    high = jnp.max(keys, axis=-1, keepdims=True) + 1  # above every key: none of it
    low, _ = jax.lax.fori_loop(0, 32, halve, (low, high))
    return jnp.min(jnp.where(keys >= low, logits, jnp.inf), axis=-1, keepdims=True)


# Vocabulary block of the two-level CDF search in `categorical_by_cdf`.
CDF_BLOCK = 256


def categorical_by_cdf(logits: jax.Array, uniforms: jax.Array) -> jax.Array:
    """One index per row drawn from softmax(logits) by inverting its CDF at `uniforms` [B] (uniform in [0, 1));
    logits: [B, V] float32, -inf where a token is excluded. Returns [B] int32.

    Exact sampling with one random number per row, where `jax.random.categorical` draws V Gumbel numbers (at a
    49k vocabulary that was 110 ms of each 64-row decode step on 2 CPU cores, against 5 ms here). The search runs
    in two levels, over block sums and then inside the chosen block, so it costs O(V) adds rather than a
    V-long sequential cumsum. A token of zero probability is never drawn: the CDF does not rise at it.
    """
    batch, vocab = logits.shape
    blocks = -(-vocab // CDF_BLOCK)
    padded = jnp.pad(logits, ((0, 0), (0, blocks * CDF_BLOCK - vocab)), constant_values=-jnp.inf)
    weights = jnp.exp(padded - jnp.max(logits, axis=-1, keepdims=True)).reshape(batch, blocks, CDF_BLOCK)
    block_mass = jnp.sum(weights, axis=-1)  # [B, N]
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    target = uniforms * block_cdf[:, -1]  # [B]

    def last_positive(mass):  # [B, n] -> [B]: the last index of positive mass (the search may round past it)
        return mass.shape[1] - 1 - jnp.argmax(mass[:, ::-1] > 0, axis=-1)

    block = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), last_positive(block_mass))
    mass_before = jnp.where(block > 0, jnp.take_along_axis(block_cdf, jnp.maximum(block - 1, 0)[:, None], 1)[:, 0],
                            0.0)
    inside = jnp.take_along_axis(weights, block[:, None, None], axis=1)[:, 0]  # [B, CDF_BLOCK]
    within = jnp.sum(jnp.cumsum(inside, axis=-1) <= (target - mass_before)[:, None], axis=-1)
    return (block * CDF_BLOCK + jnp.minimum(within, last_positive(inside))).astype(jnp.int32)


def sample_token(logits: jax.Array, rng: jax.Array, params: SamplingParams) -> jax.Array:
    """One token per row from float32 logits [B, V]; `rng`: one key for the batch, or a key per row [B]."""
    if params.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(scale_logits(logits, params.temperature), params.top_k, params.top_p)
    if rng.ndim:
        uniforms = jax.vmap(jax.random.uniform)(rng)
    else:
        uniforms = jax.random.uniform(rng, (logits.shape[0],))
    return categorical_by_cdf(filtered, uniforms)


def row_keys(prompt_keys: jax.Array, group_size: int) -> jax.Array:
    """A key per sample [P * group_size] from a key per prompt [P]: sample j of prompt p folds j into p's key."""
    samples = jnp.tile(jnp.arange(group_size), prompt_keys.shape[0])
    return jax.vmap(jax.random.fold_in)(jnp.repeat(prompt_keys, group_size), samples)


def generate(params: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array, stop_tokens: jax.Array,
             rng: jax.Array, cfg: ModelConfig, sampling: SamplingParams, pad_id: int = 0,
             group_size: int = 1, tools: ToolTurns | None = None) -> Rollout:
    """Samples `group_size` completions of each left-padded prompt: a Rollout of P * group_size rows, groups
    contiguous. Jit-able; `cfg`, `sampling`, `pad_id`, `group_size`, `tools` static.

    prompt_tokens, prompt_mask: [P, Tp] (every row holds at least one real token). stop_tokens: [P * group_size,
    N] int32, the tokens that end each row (pad unused entries with -1). `rng`: one key for the batch, or a key
    per prompt [P], so that each prompt's samples depend on its key alone, not on the rest of the batch (how
    evaluation gets the same samples however its problems are batched and spread over devices).

    Each prompt is prefilled once, not once per completion: its cache entries and its last position's logits
    are then repeated for the group, which saves (G - 1) / G of the prefill. Only the last prompt position is
    unembedded. The cache holds the prompt and the completion's first segment (`SamplingParams.segment_ends`),
    and grows by the next segment when the decoding reaches it, so a decode step reads only the written part.

    `tools`: the run's tool turns; a call the policy closes gets its result's tokens inserted after it (they
    count against max_new_tokens, carry log-prob 0 and are marked in `observation_mask`). None: no tools.
    """
    prompts, prompt_length = prompt_tokens.shape
    max_new = sampling.max_new_tokens
    prompt_mask = prompt_mask.astype(bool)
    segment_ends = sampling.segment_ends()
    prompt_valid = jnp.concatenate([prompt_mask, jnp.zeros((prompts, segment_ends[0]), bool)], axis=1)
    hidden, cache = prefill_for_rows(params, prompt_tokens, prompt_mask, cfg, prompt_length + segment_ends[0],
                                     group_size)
    first_logits = unembed(params, hidden[:, -1:], cfg)[:, 0]  # [P, V]
    per_row = lambda x, axis=0: jnp.repeat(x, group_size, axis=axis)  # noqa: E731
    cache = unstack_cache(cache)  # per layer
    prompt_tokens, prompt_mask, key_valid = per_row(prompt_tokens), per_row(prompt_mask), per_row(prompt_valid)
    batch = prompts * group_size
    next_position = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)  # [B]
    temperature = sampling.temperature if sampling.temperature > 0 else 1.0
    keys = row_keys(rng, group_size) if rng.ndim else rng
    step_keys = jax.vmap(jax.random.fold_in, (0, None)) if rng.ndim else jax.random.fold_in

    closing = None if tools is None else tools.closing_table(cfg.vocab_size)
    # Decode steps run the layers unrolled, over weights (decode_weights) and caches prepared once, here, not in
    # every step.
    decode_cfg, decode_params = dataclasses.replace(cfg, scan_layers=False), decode_weights(params, cfg)

    def emit(state, index, logits):
        """Samples token `index` from `logits` [B, V] (or inserts a queued observation token) and records it."""
        tokens, logprobs, mask, done, turns = state
        token = sample_token(logits, step_keys(keys, index), sampling)
        alive = ~done
        policy_token = alive
        if turns is not None:
            token, forced = force_observations(turns, token)
            policy_token = alive & ~forced
        token = jnp.where(alive, token, pad_id)
        tokens = tokens.at[:, index].set(token)
        logprobs = logprobs.at[:, index].set(jnp.where(policy_token, logprobs_of(logits, token, temperature), 0.0))
        mask = mask.at[:, index].set(alive)
        # An observation never ends its row, whatever tokens it holds.
        done = done | (policy_token & jnp.any(token[:, None] == stop_tokens, axis=1))
        if turns is not None:
            turns = queue_observations(turns, tools, closing, tokens, index, alive & forced, policy_token & ~done)
        return (tokens, logprobs, mask, done, turns), token

    initial = (jnp.full((batch, max_new), pad_id, jnp.int32), jnp.zeros((batch, max_new), jnp.float32),
               jnp.zeros((batch, max_new), bool), jnp.zeros((batch,), bool),
               None if tools is None else initial_turns(batch, max_new, tools))
    record, last_token = emit(initial, 0, per_row(first_logits))

    def keeps_going_to(segment_end: int):
        def keep_going(loop):
            index, _, _, _, record = loop
            return (index < segment_end) & ~jnp.all(record[3])
        return keep_going

    def decode_one(loop):
        index, cache, key_valid, last_token, record = loop
        slot = prompt_length + index - 1  # where the previous token goes
        key_valid = key_valid.at[:, slot].set(True)
        positions = (next_position + index - 1)[:, None]
        logits, cache = forward(decode_params, last_token[:, None], positions, key_valid, decode_cfg, cache, slot)
        record, token = emit(record, index, logits[:, 0])
        return index + 1, cache, key_valid, token, record

    loop = (jnp.int32(1), cache, key_valid, last_token, record)
    for segment, segment_end in enumerate(segment_ends):
        if segment:  # room for this segment's tokens: the cache and key_valid gain its slots
            index, cache, key_valid, last_token, record = loop
            new_slots = segment_end - segment_ends[segment - 1]
            loop = (index, extend_cache(cache, new_slots), jnp.pad(key_valid, ((0, 0), (0, new_slots))), last_token,
                    record)
        loop = jax.lax.while_loop(keeps_going_to(segment_end), decode_one, loop)
    record = loop[4]
    tokens, logprobs, mask, done, turns = record
    observation_mask = jnp.zeros_like(mask) if turns is None else turns.observation_mask
    return Rollout(prompt_tokens, prompt_mask, tokens, logprobs, mask.astype(jnp.int32), ~done,
                   observation_mask.astype(jnp.int32))


def generate_groups(params: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array, rng: jax.Array,
                    cfg: ModelConfig, sampling: SamplingParams, group_size: int, stop_ids: tuple[int, ...],
                    pad_id: int, tools: ToolTurns | None = None) -> Rollout:
    """`group_size` completions of each of P prompts: a Rollout of P * group_size rows, groups contiguous; `tools`
    as in `generate`."""
    stop_tokens = jnp.broadcast_to(jnp.asarray(stop_ids, jnp.int32),
                                   (prompt_tokens.shape[0] * group_size, len(stop_ids)))
    return generate(params, prompt_tokens, prompt_mask, stop_tokens, rng, cfg, sampling, pad_id, group_size, tools)
