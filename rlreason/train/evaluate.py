"""Held-out evaluation: k samples per prompt, scored by the verifiers; pass@1, pass@k, maj@k, format rate.

Each accuracy comes in three views (`verifiers.lenient.verdicts`): unsuffixed, the accuracy reward alone (the
answer inside `<answer>` for the R1 tasks); `_strict`, that and the run's format rewards (what the reward pays);
`_lenient`, the answer right wherever the completion writes it.
"""

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
from rlreason.verifiers.lenient import accuracy_functions, lenient_answer_text, verdicts


# The accuracy views (keys of `verifiers.lenient.verdicts`) and the suffix of their summary keys.
VIEWS = {"answer": "", "strict": "_strict", "lenient": "_lenient"}


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

    Returns (summary with pass@1, pass@k, maj@k in each view, format, mean_length as fractions/tokens; one row
    per sample with `correct` (accuracy reward), `strict`, `lenient` and `format`).
    """
    k = cfg.eval.num_samples
    sampling = SamplingParams.from_config(cfg.sampling, temperature=cfg.eval.temperature)
    accuracy_name = cfg.grpo.accuracy_reward
    columns = accuracy_functions(accuracy_name)
    reward_names = [reward.name for reward in cfg.grpo.rewards]
    scorer = make_scorer(tokenizer, tuple(RewardConfig(name) for name in columns), cfg.grpo.verifier_timeout_s)

    @jax.jit
    def sample_and_score(params, batch, rng):
        roll = generate_groups(params, batch["prompt_tokens"], batch["prompt_mask"], rng, model_cfg, sampling, k,
                               tokenizer.stop_ids, tokenizer.pad_id)
        golds = jax.numpy.repeat(batch["gold_bytes"], k, axis=0)
        return roll, scorer(roll.prompt_tokens, roll.prompt_mask, roll.tokens, roll.completion_mask, golds)

    rows, per_problem = [], {view: [] for view in VIEWS}
    bar = tqdm(total=len(prompts), desc="eval", unit="problem", disable=None if show_progress else True,
               dynamic_ncols=True)
    for start in range(0, len(prompts), cfg.eval.batch_size):
        rows_here = slice(start, start + cfg.eval.batch_size)
        batch = {"prompt_tokens": prompts.prompt_tokens[rows_here], "prompt_mask": prompts.prompt_mask[rows_here],
                 "gold_bytes": prompts.gold_bytes[rows_here]}
        roll, rewards = jax.device_get(sample_and_score(params, batch, jax.random.key(seed + start)))
        passed = {view: verdict.tolist()
                  for view, verdict in verdicts(rewards, columns, reward_names, accuracy_name).items()}
        for index, example in enumerate(prompts.examples[rows_here]):
            samples = range(index * k, (index + 1) * k)
            texts = [detokenize(tokenizer, roll.tokens[i], roll.completion_mask[i]) for i in samples]
            answers = {"answer": [extract_answer(text) for text in texts]}
            answers["strict"] = answers["answer"]
            answers["lenient"] = [lenient_answer_text(text) for text in texts]
            for view in VIEWS:
                correct = [passed[view][i] for i in samples]
                per_problem[view].append((sum(correct), majority_correct(answers[view], correct)))
            rows += [{"question": example.question, "gold": example.answer, "completion": text,
                      "correct": passed["answer"][i], "strict": passed["strict"][i], "lenient": passed["lenient"][i],
                      "format": passed["format"][i], "length": int(roll.completion_mask[i].sum())}
                     for i, text in zip(samples, texts)]
        bar.update(len(prompts.examples[rows_here]))
    bar.close()
    summary = {}
    for view, suffix in VIEWS.items():
        summary[f"pass@1{suffix}"] = float(np.mean([pass_at_k(k, c, 1) for c, _ in per_problem[view]]))
        summary[f"pass@{k}{suffix}"] = float(np.mean([pass_at_k(k, c, k) for c, _ in per_problem[view]]))
        summary[f"maj@{k}{suffix}"] = float(np.mean([maj for _, maj in per_problem[view]]))
    summary.update({
        "format": float(np.mean([row["format"] for row in rows])),
        "mean_length": float(np.mean([row["length"] for row in rows])),
        "num_problems": len(per_problem["answer"]),
        "samples_per_problem": k,
    })
    return summary, rows
