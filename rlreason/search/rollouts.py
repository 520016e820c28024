"""MCTS results as GRPO rollouts (grpo.rollout_source=mcts): search-improved completions with their verified
rewards, in the groups the GRPO step learns from.

Every step, MCTS valued by verified rollouts (rlreason.search.mcts: search.train_simulations rounds,
search.mcts_expand samples per expansion, search.num_rollouts continuations of a leaf checked against the gold
answer by grpo.accuracy_reward, steps ending at search.delimiter) runs on the step's prompts with the current
policy. A prompt's group of grpo.num_generations rows holds the distinct finished completions its search found,
most visited first, and is filled up with plain samples of the policy when the search found fewer. Every row
keeps the log-probs its tokens were sampled with (pi_old: the search samples each step from the policy, it only
chooses among the samples), and the run's rewards score the rows as any rollout's.

The search is driven from the host, so this source runs over the separately compiled score and learn phases (as
dynamic sampling's refill does), on one process.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from rlreason.config import ModelConfig, SearchConfig
from rlreason.parallel.rules import AXIS_RULES, Rules, put_rows
from rlreason.sampling.sampler import Rollout, SamplingParams
from rlreason.search.continuation import continue_sequences
from rlreason.search.mcts import RolloutEvaluator, finished_nodes, mcts_search
from rlreason.search.steps import delimiter_table
from rlreason.tokenizers import Tokenizer
from rlreason.verifiers.base import get_reward_fn
from rlreason.verifiers.bridge import detokenize
from rlreason.verifiers.golds import decode_gold


class Sampled(NamedTuple):
    """A completion and the log-probs its tokens were sampled with."""

    ids: list[int]
    logprobs: np.ndarray  # [len(ids)] float32


class SearchStats(NamedTuple):
    search_rows: float  # mean rows per group that came from the search (the rest are plain samples)
    tokens_generated: float  # mean tokens the search generated per prompt


def pack_groups(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, groups: list[list[Sampled]], width: int,
                stop_ids: tuple[int, ...], pad_id: int) -> Rollout:
    """The Rollout of P groups of G completions each: prompt rows [P, Tp] repeated G times, completions cut to
    `width` tokens and padded after, `truncated` where no stop token lies within the kept tokens. numpy arrays."""
    sizes = {len(group) for group in groups}
    if len(sizes) != 1:
        raise ValueError(f"every group needs the same number of completions, got sizes {sorted(sizes)}")
    group_size = sizes.pop()
    rows = [completion for group in groups for completion in group]
    tokens = np.full((len(rows), width), pad_id, np.int32)
    logprobs = np.zeros((len(rows), width), np.float32)
    mask = np.zeros((len(rows), width), np.int32)
    truncated = np.zeros(len(rows), bool)
    for row, completion in enumerate(rows):
        kept = completion.ids[:width]
        stop = next((i for i, token in enumerate(kept) if token in stop_ids), None)
        kept = kept if stop is None else kept[:stop + 1]  # nothing after the first stop token counts
        tokens[row, :len(kept)] = kept
        logprobs[row, :len(kept)] = completion.logprobs[:len(kept)]
        mask[row, :len(kept)] = 1
        truncated[row] = stop is None
    return Rollout(np.repeat(prompt_tokens, group_size, axis=0), np.repeat(prompt_mask, group_size, axis=0), tokens,
                   logprobs, mask, truncated, np.zeros_like(mask))


def search_completions(results, group_size: int) -> list[list[Sampled]]:
    """Each search's distinct finished completions, most visited first (the chosen one first when finished), at
    most `group_size`."""
    groups = []
    for result in results:
        seen, found = set(), []
        for node in finished_nodes(result):
            ids = tuple(node.completion())
            if ids not in seen and len(found) < group_size:
                seen.add(ids)
                found.append(Sampled(list(ids), node.completion_logprobs()))
        groups.append(found)
    return groups


def make_search_rollout(model_cfg: ModelConfig, tokenizer: Tokenizer, settings: SearchConfig,
                        sampling: SamplingParams, accuracy_reward: str, group_size: int, mesh: Mesh,
                        rules: Rules = AXIS_RULES) -> Callable:
    """rollout(params, batch, rng) -> (Rollout [P * group_size rows] laid out on `mesh`, SearchStats): the module
    docstring's groups for the batch's prompts (prompt_tokens, prompt_mask [P, Tp], gold_bytes [P, Lg])."""
    reward = get_reward_fn(accuracy_reward)
    table = delimiter_table(tokenizer, settings.delimiter)
    stop_ids = tuple(tokenizer.stop_ids)

    def rollout(params, batch, rng: jax.Array) -> tuple[Rollout, SearchStats]:
        prompt_tokens, prompt_mask, gold_bytes = (np.asarray(jax.device_get(batch[key]))
                                                  for key in ("prompt_tokens", "prompt_mask", "gold_bytes"))
        prompts = [tokens[mask.astype(bool)].tolist() for tokens, mask in zip(prompt_tokens, prompt_mask)]
        golds = [decode_gold(row) for row in gold_bytes]
        questions = [detokenize(tokenizer, tokens, mask) for tokens, mask in zip(prompt_tokens, prompt_mask)]

        def verify(problem: int, text: str) -> float:
            gold, metadata = golds[problem]
            return float(reward(questions[problem], text, gold, metadata) == 1.0)

        search_rng, fill_rng = jax.random.split(rng)
        results = mcts_search(params, model_cfg, tokenizer, prompts,
                              RolloutEvaluator(verify, settings.num_rollouts, sampling.max_new_tokens), table,
                              settings.train_simulations, settings.mcts_expand, settings.max_steps,
                              settings.max_step_tokens, sampling, search_rng, c_puct=settings.c_puct, mesh=mesh,
                              rules=rules)
        groups = search_completions(results, group_size)
        # Plain samples fill the groups: group_size per prompt in one sampler call, the first ones needed used.
        fills = continue_sequences(params, model_cfg, prompts, prompt_tokens.shape[1],
                                   jax.random.split(fill_rng, len(prompts)), sampling, group_size, stop_ids,
                                   tokenizer.pad_id, mesh, rules)
        found = [len(group) for group in groups]
        for problem, group in enumerate(groups):
            plain = fills[problem * group_size:(problem + 1) * group_size]
            group += [Sampled(sample.ids, sample.logprobs) for sample in plain[:group_size - len(group)]]
        roll = pack_groups(prompt_tokens, prompt_mask, groups, sampling.max_new_tokens, stop_ids, tokenizer.pad_id)
        roll = put_rows(roll, mesh, rules)
        return roll, SearchStats(float(np.mean(found)),
                                 float(np.mean([result.tokens_generated for result in results])))

    return rollout

