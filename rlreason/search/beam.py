"""Step-level beam search: grow each problem's best `beam` partial solutions one reasoning step at a time.

Each round continues every unfinished beam `expand` times up to its next step end (a delimiter token, a stop
token, or `max_step_tokens` new tokens), in one batch through the compiled sampler, scores every candidate
with `score` (a PRM's probability at its last token, or any [R] scorer), and keeps the `beam` best; a beam that
ended (a stop token) is kept as it is and competes with the new candidates. Rows keep one padded width every
round, so the sampler compiles once per count of open beams (at most `beam` programs).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from rlreason.config import ModelConfig
from rlreason.sampling.sampler import SamplingParams
from rlreason.search.continuation import continue_sequences, padded_rows
from rlreason.tokenizers import Tokenizer

# score(tokens [R, W], mask [R, W]) -> [R] float: how good each left-padded prompt + partial solution is.
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def step_beam_search(params, cfg: ModelConfig, tokenizer: Tokenizer, prompt_ids: list[int], score: Scorer,
                     is_delimiter: np.ndarray, beam: int, expand: int, max_steps: int, max_step_tokens: int,
                     sampling: SamplingParams, rng: jax.Array) -> list[int]:
    """The best completion's token ids (up to and including its stop token, if it reached one) for one prompt.
    `sampling.max_new_tokens` is ignored: `max_step_tokens` bounds each step."""
    stop_ids = tuple(tokenizer.stop_ids)
    step_stops = stop_ids + tuple(int(token) for token in np.flatnonzero(is_delimiter))
    width = len(prompt_ids) + max_steps * max_step_tokens
    step_sampling = dataclasses.replace(sampling, max_new_tokens=max_step_tokens)
    beams: list[tuple[list[int], bool, float]] = [([], False, 0.0)]  # (completion ids, finished, score)
    for round_index in range(max_steps):
        open_beams = [ids for ids, finished, _ in beams if not finished]
        if not open_beams:
            break
        keys = jax.random.split(jax.random.fold_in(rng, round_index), len(open_beams))
        steps = continue_sequences(params, cfg, [prompt_ids + ids for ids in open_beams], width, keys,
                                   step_sampling, expand, step_stops, tokenizer.pad_id)
        candidates = [(open_beams[row // expand] + step.ids, bool(step.ids) and step.ids[-1] in stop_ids)
                      for row, step in enumerate(steps)]
        scores = score(*padded_rows([prompt_ids + ids for ids, _ in candidates], width, tokenizer.pad_id))
        pool = [(ids, finished, float(value)) for (ids, finished), value in zip(candidates, scores)]
        pool += [entry for entry in beams if entry[1]]
        beams = sorted(pool, key=lambda entry: -entry[2])[:beam]  # stable: ties keep the batch order
    return beams[0][0]
