"""Step-level beam search: grow each problem's best `beam` partial solutions one reasoning step at a time, all
problems together.

Each round continues every unfinished beam of every problem `expand` times up to its next step end (a
delimiter token, a stop token, or `max_step_tokens` new tokens), in one batch through the compiled sampler,
scores every candidate with `score` (a PRM's probability at its last token, or any [R] scorer) in one call, and
keeps each problem's `beam` best; a beam that ended (a stop token) is kept as it is and competes with the new
candidates. Rows keep one padded width every round, so the sampler compiles once per count of open beams.
Beam j of problem p in round r draws from fold_in(fold_in(keys[p], r), j) alone, so a problem's search does not
depend on the other problems in the batch or on how its rows are split over devices.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from rlreason.config import ModelConfig
from rlreason.parallel.rules import AXIS_RULES, Rules
from rlreason.sampling.sampler import SamplingParams
from rlreason.search.continuation import continue_sequences, padded_rows
from rlreason.tokenizers import Tokenizer

# score(tokens [R, W], mask [R, W]) -> [R] float: how good each left-padded prompt + partial solution is.
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


class BeamResult(NamedTuple):
    """One problem's search."""

    completion: list[int]  # the best completion's token ids, up to and including its stop token (if it has one)
    score: float  # its score
    finished: bool  # it ended with a stop token
    tokens_generated: int  # tokens the sampler generated for this problem over all rounds: the search's cost


class _Beam(NamedTuple):
    ids: list[int]
    finished: bool
    score: float


def _beam_keys(keys: jax.Array, slots: list[tuple[int, int]], round_index: int) -> jax.Array:
    """[R] keys fold_in(fold_in(keys[problem], round), beam) for the (problem, beam) slots."""
    problems = np.array([problem for problem, _ in slots], np.int32)
    beams = np.array([beam for _, beam in slots], np.uint32)
    fold = jax.random.fold_in
    return jax.vmap(lambda key, beam: fold(fold(key, round_index), beam))(keys[problems], beams)


def beam_search(params, cfg: ModelConfig, tokenizer: Tokenizer, prompts: list[list[int]], score: Scorer,
                is_delimiter: np.ndarray, beam: int, expand: int, max_steps: int, max_step_tokens: int,
                sampling: SamplingParams, keys: jax.Array, mesh: Mesh | None = None,
                rules: Rules = AXIS_RULES) -> list[BeamResult]:
    """The search of each of P prompts (token ids, templated), problem p's from keys[p] ([P] keys). `is_delimiter` [V] bool: the tokens that end a
    step (`steps.delimiter_table`). `sampling.max_new_tokens` is ignored: `max_step_tokens` bounds each step.
    `mesh`: split the sampler's rows over its batch axes by `rules` (params placed by the caller)."""
    stop_ids = tuple(tokenizer.stop_ids)
    step_stops = stop_ids + tuple(int(token) for token in np.flatnonzero(is_delimiter))
    width = max(map(len, prompts)) + max_steps * max_step_tokens
    step_sampling = dataclasses.replace(sampling, max_new_tokens=max_step_tokens)
    beams = [[_Beam([], False, 0.0)] for _ in prompts]
    spent = np.zeros(len(prompts), np.int64)
    for round_index in range(max_steps):
        slots = [(problem, j) for problem, kept in enumerate(beams) for j, entry in enumerate(kept)
                 if not entry.finished]
        if not slots:
            break
        steps = continue_sequences(params, cfg, [prompts[p] + beams[p][j].ids for p, j in slots], width,
                                   _beam_keys(keys, slots, round_index), step_sampling, expand, step_stops,
                                   tokenizer.pad_id, mesh, rules)
        candidates = []  # (problem, ids, finished), in slot order then sample order
        for row, step in enumerate(steps):
            problem, j = slots[row // expand]
            spent[problem] += len(step.ids)
            candidates.append((problem, beams[problem][j].ids + step.ids,
                               bool(step.ids) and step.ids[-1] in stop_ids))
        scores = score(*padded_rows([prompts[p] + ids for p, ids, _ in candidates], width, tokenizer.pad_id))
        pools = [[entry for entry in kept if entry.finished] for kept in beams]
        for (problem, ids, finished), value in zip(candidates, scores):
            pools[problem].append(_Beam(ids, finished, float(value)))
        # Stable sort: ties keep finished beams first, then the batch order.
        beams = [sorted(pool, key=lambda entry: -entry.score)[:beam] for pool in pools]
    return [BeamResult(kept[0].ids, kept[0].score, kept[0].finished, int(cost)) for kept, cost in zip(beams, spent)]
