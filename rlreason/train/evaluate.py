"""Held-out evaluation: k samples per prompt, scored by the verifiers; pass@1, pass@k, maj@k, format rate."""

from __future__ import annotations

import collections
import math

import jax
import numpy as np
from tqdm.auto import tqdm

from rlreason.config import Config, ModelConfig, RewardConfig
from rlreason.data.encoding import PromptSet
from rlreason.sampling.sampler import SamplingParams, generate_groups
from rlreason.tokenizers import Tokenizer
from rlreason.verifiers.bridge import detokenize, make_scorer
from rlreason.verifiers.format import extract_answer


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k estimate from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Whether the most frequent extracted answer (ties: first seen) is a correct one."""
    counts = collections.Counter(answer for answer in answers if answer is not None)
    if not counts:
        return False
    majority = counts.most_common(1)[0][0]
    return any(ok for answer, ok in zip(answers, correct) if answer == majority)


def evaluate(params, model_cfg: ModelConfig, tokenizer: Tokenizer, prompts: PromptSet, cfg: Config,
             seed: int = 0, show_progress: bool = False) -> tuple[dict, list[dict]]:
    """Samples `eval.num_samples` completions per prompt of `prompts` and scores them; `show_progress`: a
    progress bar over the problems on stderr when it is a terminal.

    Returns (summary with pass@1, pass@k, maj@k, format, mean_length as fractions/tokens; one row per sample).
    """
    k = cfg.eval.num_samples
    sampling = SamplingParams.from_config(cfg.sampling, temperature=cfg.eval.temperature)
    accuracy_name = cfg.grpo.accuracy_reward
    scorer = make_scorer(tokenizer, (RewardConfig("r1_format"), RewardConfig(accuracy_name)),
                         cfg.grpo.verifier_timeout_s)

    @jax.jit
    def sample_and_score(params, batch, rng):
        roll = generate_groups(params, batch["prompt_tokens"], batch["prompt_mask"], rng, model_cfg, sampling, k,
                               tokenizer.stop_ids, tokenizer.pad_id)
        golds = jax.numpy.repeat(batch["gold_bytes"], k, axis=0)
        return roll, scorer(roll.prompt_tokens, roll.prompt_mask, roll.tokens, roll.completion_mask, golds)

    rows, per_problem = [], []
    bar = tqdm(total=len(prompts), desc="eval", unit="problem", disable=None if show_progress else True,
               dynamic_ncols=True)
    for start in range(0, len(prompts), cfg.eval.batch_size):
        rows_here = slice(start, start + cfg.eval.batch_size)
        batch = {"prompt_tokens": prompts.prompt_tokens[rows_here], "prompt_mask": prompts.prompt_mask[rows_here],
                 "gold_bytes": prompts.gold_bytes[rows_here]}
        roll, rewards = jax.device_get(sample_and_score(params, batch, jax.random.key(seed + start)))
        for index, example in enumerate(prompts.examples[rows_here]):
            samples = range(index * k, (index + 1) * k)
            texts = [detokenize(tokenizer, roll.tokens[i], roll.completion_mask[i]) for i in samples]
            correct = [bool(rewards[i, 1] >= 1.0) for i in samples]
            formatted = [bool(rewards[i, 0] >= 1.0) for i in samples]
            answers = [extract_answer(text) for text in texts]
            per_problem.append((sum(correct), majority_correct(answers, correct)))
            rows += [{"question": example.question, "gold": example.answer, "completion": text, "correct": ok,
                      "format": fmt, "length": int(roll.completion_mask[i].sum())}
                     for i, text, ok, fmt in zip(samples, texts, correct, formatted)]
        bar.update(len(prompts.examples[rows_here]))
    bar.close()
    summary = {
        "pass@1": float(np.mean([pass_at_k(k, c, 1) for c, _ in per_problem])),
        f"pass@{k}": float(np.mean([pass_at_k(k, c, k) for c, _ in per_problem])),
        f"maj@{k}": float(np.mean([maj for _, maj in per_problem])),
        "format": float(np.mean([row["format"] for row in rows])),
        "mean_length": float(np.mean([row["length"] for row in rows])),
        "num_problems": len(per_problem),
        "samples_per_problem": k,
    }
    return summary, rows
