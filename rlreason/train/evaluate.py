"""Held-out evaluation: k samples per problem on every device of the run's mesh, scored by the set's reward
functions; pass@1, pass@k, maj@k, format compliance, mean length and reward.

One `Evaluator` is made per run (`rlreason train` with train.eval_every > 0, `rlreason eval`, the demo) and
called with params: its sampling function compiles once, on the first call, whatever the set or the step.
Each call spreads eval.batch_size problems over the mesh's batch axes (every process holds the whole small
prompt set and feeds its own rows); the samples and scores are gathered back to every process, which all
compute the same summary. Sample j of problem i draws from fold_in(fold_in(key(train.seed), i), j) alone, so
the numbers do not depend on how the problems are batched, nor on how many hosts share the devices, and every
evaluation of a run draws the same random numbers (step-to-step changes are the params', not the dice's).

With sampling.tools enabled, the samples call the tools as the training rollouts do (rlreason.sampling.tools).

Each accuracy comes in three views (`verifiers.lenient.verdicts`): unsuffixed, the accuracy reward alone (the
answer inside `<answer>` for the R1 tasks); `_strict`, that and the run's format rewards (what the reward pays);
`_lenient`, the answer right wherever the completion writes it. A set is scored by the run's grpo.rewards
(the set's own accuracy reward in place of grpo.accuracy_reward: rlreason.data.eval_sets) and the metric-only
accuracy functions, as the training step scores its samples.

Summary keys (`summary_names`): pass@1, pass@<k>, maj@<k> in each view (e.g. pass@1_lenient, maj@8_strict),
format, mean_length, reward, num_problems, samples_per_problem, verifier/timed_out_calls, verifier/killed_calls.
  pass@k   the unbiased estimate 1 - C(n-c, k) / C(n, k) per problem (n samples, c correct), averaged.
  maj@k    a vote per problem over the samples' extracted answers (see `majority_vote`), averaged.
  format   the share of samples that `r1_format` scores 1.

Files, under a run directory RUN_DIR (`train.out_dir`, or `rlreason eval --out`), per set NAME of eval.sets:
  RUN_DIR/eval/NAME.jsonl            one row per evaluation: {"step": N, <summary keys>...}
  RUN_DIR/eval/NAME/step_<N>.jsonl   one row per sample of the evaluation at step N, problems in order and
                                     each problem's k samples together: problem (index in the set), sample
                                     (0..k-1), question, gold, completion, answer (the <answer> text or null),
                                     lenient_answer (`lenient_answer_text` or null), correct (accuracy reward),
                                     strict, lenient, format, length (tokens), truncated, reward (the weighted
                                     sum of the rewards, null if none applies), rewards ({function: score or
                                     null}, the metric-only ones included), and with eval.prm prm_score (the
                                     PRM's probability of the completion's weakest step)
In training the summaries also go to the metric writers (metrics.jsonl, TensorBoard, W&B) as
eval/NAME/<summary key> in the row of step N. Resuming from step S cuts NAME.jsonl back to steps <= S and
removes the step files of later steps, as metrics.jsonl is cut.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh

from rlreason.config import EVAL_METRIC_PREFIX, Config, ModelConfig, RewardConfig
from rlreason.data.eval_sets import EvalSet, load_eval_sets
from rlreason.models.transformer import laid_out
from rlreason.parallel.host_data import gather_rows, global_batch, process_rows
from rlreason.parallel.rules import Rules, batch_shards, model_layout
from rlreason.progress import progress_bar
from rlreason.sampling.sampler import SamplingParams, generate_groups
from rlreason.sampling.tools import make_tool_turns
from rlreason.search.prm import check_same_tokenizer, completion_scores, load_prm
from rlreason.search.steps import delimiter_table
from rlreason.tokenizers import Tokenizer
from rlreason.train.jsonl import append_rows, rows_through, write_rows
from rlreason.verifiers.answers import canonical_answer
from rlreason.verifiers.bridge import detokenize, make_scorer, take_verifier_metrics
from rlreason.verifiers.combine import combine_rewards
from rlreason.verifiers.format import extract_answer
from rlreason.verifiers.lenient import lenient_answer_text, metric_only_functions, verdicts

# The accuracy views (keys of `verifiers.lenient.verdicts`) and the suffix of their summary keys.
VIEWS = {"answer": "", "strict": "_strict", "lenient": "_lenient"}
EVAL_DIR = "eval"


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k estimate from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """maj@k of one problem: the score of a vote over its samples' extracted answers.

    Unparseable answers (None) do not vote; when no sample has an answer the vote scores 0. The answer with
    the most votes wins; a tie between several is settled by a uniformly random pick, so the vote scores the
    expected value, the fraction of the tied answers that are correct (a 2-2 tie between a right and a wrong
    answer scores 0.5), whatever the order of the samples. An answer is correct when a sample that gave it
    is (`correct`, aligned with `answers`).
    """
    votes = collections.Counter(answer for answer in answers if answer is not None)
    if not votes:
        return 0.0
    most = max(votes.values())
    tied = [answer for answer, count in votes.items() if count == most]
    right = {answer for answer, ok in zip(answers, correct) if ok and answer is not None}
    return sum(answer in right for answer in tied) / len(tied)


def summary_names(num_samples: int) -> list[str]:
    """The keys of an evaluation's summary with `num_samples` (eval.num_samples) samples per problem."""
    names = [f"{metric}{suffix}" for suffix in VIEWS.values()
             for metric in ("pass@1", f"pass@{num_samples}", f"maj@{num_samples}")]
    return list(dict.fromkeys(names + ["format", "mean_length", "reward", "num_problems", "samples_per_problem",
                                       "verifier/timed_out_calls", "verifier/killed_calls"]))


def scored_functions(eval_set: EvalSet) -> tuple[RewardConfig, ...]:
    """The set's rewards, then the metric-only accuracy functions (weight 0), as the training step scores."""
    names = [reward.name for reward in eval_set.rewards]
    return eval_set.rewards + tuple(RewardConfig(name, weight=0.0)
                                    for name in metric_only_functions(names, eval_set.accuracy_reward))


def votes(view: str, completions: Sequence[str], formatted: Sequence[bool]) -> list[str | None]:
    """Each sample's answer in a view, for maj@k: the canonical `<answer>` text (answer; strict: only from
    samples in the format), or `lenient_answer_text` (lenient)."""
    if view == "lenient":
        return [lenient_answer_text(text) for text in completions]
    tagged = [extract_answer(text) for text in completions]
    return [None if answer is None or (view == "strict" and not ok) else canonical_answer(answer)
            for answer, ok in zip(tagged, formatted)]


def summarize(rows: list[dict], num_samples: int) -> dict[str, float]:
    """The summary (see the module docstring) of per-sample rows, each problem's `num_samples` rows together."""
    problems = [rows[start:start + num_samples] for start in range(0, len(rows), num_samples)]
    summary = {}
    for view, suffix in VIEWS.items():
        column = "correct" if view == "answer" else view
        counts = [sum(row[column] for row in problem) for problem in problems]
        majority = [majority_vote(votes(view, [row["completion"] for row in problem],
                                        [row["format"] for row in problem]), [row[column] for row in problem])
                    for problem in problems]
        summary[f"pass@1{suffix}"] = float(np.mean([pass_at_k(num_samples, count, 1) for count in counts]))
        summary[f"pass@{num_samples}{suffix}"] = float(np.mean([pass_at_k(num_samples, count, num_samples)
                                                                for count in counts]))
        summary[f"maj@{num_samples}{suffix}"] = float(np.mean(majority))
    rewards = [row["reward"] for row in rows if row["reward"] is not None]
    summary.update(format=float(np.mean([row["format"] for row in rows])),
                   mean_length=float(np.mean([row["length"] for row in rows])),
                   reward=float(np.mean(rewards)) if rewards else math.nan,
                   num_problems=len(problems), samples_per_problem=num_samples)
    return summary


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """One set's evaluation: the summary (`summary_names`) and a row per sample (the module docstring's fields)."""

    summary: dict[str, float]
    rows: list[dict]


class Evaluator:
    """Evaluates params on held-out sets (see the module docstring); made once, called at every evaluation.

    `sets`: what it evaluates (rlreason.data.eval_sets.load_eval_sets); the problems per call are
    eval.batch_size, or the largest set if smaller, rounded up to a multiple of the devices the batch is split
    over. Every process of the run must make it and call it together: its calls are collective.
    """

    def __init__(self, cfg: Config, model_cfg: ModelConfig, tokenizer: Tokenizer, mesh: Mesh, rules: Rules,
                 sets: Sequence[EvalSet]):
        self.cfg, self.tokenizer, self.mesh, self.rules, self.sets = cfg, tokenizer, mesh, rules, tuple(sets)
        self.num_samples = k = cfg.eval.num_samples
        split = batch_shards(mesh, rules)
        wanted = min(cfg.eval.batch_size, max(len(eval_set.prompts) for eval_set in self.sets))
        self.problems_per_call = -(-wanted // split) * split
        sampling = SamplingParams.from_config(cfg.sampling, temperature=cfg.eval.temperature)
        tools = make_tool_turns(cfg.sampling.tools, tokenizer)  # a policy trained with tools is evaluated with them
        arrays = model_layout(mesh, rules)

        def sample(params, batch):
            """batch: prompt_tokens, prompt_mask int32 [P, Tp], gold_bytes uint8 [P, Lg], problem int32 [P]."""
            seed_key = jax.random.key(cfg.train.seed)
            prompt_keys = jax.vmap(jax.random.fold_in, (None, 0))(seed_key, batch["problem"])
            roll = generate_groups(params, batch["prompt_tokens"], batch["prompt_mask"], prompt_keys, model_cfg,
                                   sampling, k, tokenizer.stop_ids, tokenizer.pad_id, tools)
            # Rows [P * k] stay where their prompts were, split as the scorer splits them.
            return arrays.rows((roll, jnp.repeat(batch["gold_bytes"], k, axis=0)))

        self.sample = jax.jit(laid_out(sample, arrays))  # compiled once: every call has the same shapes and shardings
        self.prm_scores = prm_scoring(cfg.eval.prm, tokenizer, mesh, rules) if cfg.eval.prm else None
        grpo = cfg.grpo
        self._scorers = {}
        for eval_set in self.sets:
            functions = scored_functions(eval_set)
            names = tuple(reward.name for reward in functions)
            if names not in self._scorers:
                self._scorers[names] = jax.jit(make_scorer(
                    tokenizer, functions, grpo.verifier_timeout_s, mesh=mesh, rules=rules,
                    memory_limit_mb=grpo.verifier_memory_mb, raise_pool_errors=False))

    def _batch(self, prompts, start: int) -> dict:
        """Problems [start, start + problems_per_call) of `prompts` as global arrays; past the end, copies of
        problem 0 with no gold (not scored, dropped)."""
        width = self.problems_per_call
        problems = np.arange(start, start + width, dtype=np.int32)
        real = problems < len(prompts)
        taken = np.where(real, problems, 0)
        rows = {"prompt_tokens": prompts.prompt_tokens[taken], "prompt_mask": prompts.prompt_mask[taken],
                "gold_bytes": prompts.gold_bytes[taken] * real[:, None].astype(np.uint8), "problem": problems}
        here = process_rows(self.mesh, width, self.rules)
        return global_batch({key: value[here] for key, value in rows.items()}, self.mesh, width, self.rules)

    def evaluate(self, params, eval_set: EvalSet, show_progress: bool = False) -> EvalResult:
        """`eval.num_samples` samples of every problem of `eval_set`, scored and summarized; `show_progress`: a
        progress bar over the problems on stderr when it is a terminal."""
        k, prompts = self.num_samples, eval_set.prompts
        functions = scored_functions(eval_set)
        columns = [reward.name for reward in functions]
        reward_columns = len(eval_set.rewards)
        weights = [reward.weight for reward in eval_set.rewards]
        score = self._scorers[tuple(columns)]
        rows = []
        bar = progress_bar(total=len(prompts), desc=f"eval {eval_set.name}", unit="problem", show=show_progress)
        for start in range(0, len(prompts), self.problems_per_call):
            roll, golds = self.sample(params, self._batch(prompts, start))
            scores = score(roll.prompt_tokens, roll.prompt_mask, roll.tokens, roll.completion_mask, golds)
            tokens, mask, truncated, scores = gather_rows((roll.tokens, roll.completion_mask, roll.truncated, scores))
            if self.prm_scores:
                process_scores = gather_rows(self.prm_scores(roll.prompt_tokens, roll.prompt_mask, roll.tokens,
                                                             roll.completion_mask))
            passed = verdicts(scores, columns, columns[:reward_columns], eval_set.accuracy_reward)
            rewards = np.asarray(combine_rewards(scores[:, :reward_columns], weights), np.float64)  # NaN: none apply
            for problem in range(start, min(start + self.problems_per_call, len(prompts))):
                example = prompts.examples[problem]
                for sample in range(k):
                    i = (problem - start) * k + sample
                    text = detokenize(self.tokenizer, tokens[i], mask[i])
                    rows.append({
                        "problem": problem, "sample": sample, "question": example.question, "gold": example.answer,
                        "completion": text, "answer": extract_answer(text),
                        "lenient_answer": lenient_answer_text(text),
                        "correct": bool(passed["answer"][i]), "strict": bool(passed["strict"][i]),
                        "lenient": bool(passed["lenient"][i]), "format": bool(passed["format"][i]),
                        "length": int(mask[i].sum()), "truncated": bool(truncated[i]),
                        "reward": None if np.isnan(rewards[i]) else float(rewards[i]),
                        "rewards": {name: None if np.isnan(value) else float(value)
                                    for name, value in zip(columns, scores[i].tolist())},
                        **({"prm_score": float(process_scores[i])} if self.prm_scores else {})})
            bar.update(min(self.problems_per_call, len(prompts) - start))
        bar.close()
        summary = summarize(rows, k)
        summary.update(take_verifier_metrics())  # this set's failed verifier calls, from every host
        return EvalResult(summary, rows)

    def evaluate_all(self, params, show_progress: bool = False) -> dict[str, EvalResult]:
        """Every set, by name, in eval.sets order."""
        return {eval_set.name: self.evaluate(params, eval_set, show_progress) for eval_set in self.sets}


def metric_key(set_name: str, summary_key: str) -> str:
    """A summary value's key among a run's metrics: eval/<set>/<summary key>."""
    return f"{EVAL_METRIC_PREFIX}{set_name}/{summary_key}"


def eval_metrics(results: dict[str, EvalResult]) -> dict[str, float]:
    """The summaries as metric-writer keys (`metric_key`)."""
    return {metric_key(name, key): value for name, result in results.items() for key, value in result.summary.items()}


def eval_metric_names(evaluator: Evaluator) -> list[str]:
    """The metric keys every evaluation of `evaluator` writes."""
    return [metric_key(eval_set.name, key) for eval_set in evaluator.sets
            for key in summary_names(evaluator.num_samples)]


def write_results(run_dir: epath.Path, step: int, results: dict[str, EvalResult]) -> None:
    """Appends each set's summary to RUN_DIR/eval/<set>.jsonl and writes its samples to
    RUN_DIR/eval/<set>/step_<step>.jsonl (the module docstring's layout)."""
    for name, result in results.items():
        samples_dir = run_dir / EVAL_DIR / name
        samples_dir.mkdir(parents=True, exist_ok=True)
        write_rows(samples_dir / f"step_{step}.jsonl", result.rows)
        append_rows(run_dir / EVAL_DIR / f"{name}.jsonl", [{"step": step, **result.summary}])


def cut_results(run_dir: epath.Path, step: int) -> None:
    """Resuming from `step`: every RUN_DIR/eval/<set>.jsonl keeps its rows of steps up to `step`, and the sample
    files of later steps are removed."""
    directory = run_dir / EVAL_DIR
    if not directory.is_dir():
        return
    for summaries in directory.glob("*.jsonl"):
        write_rows(summaries, rows_through(summaries, step))
    for samples in directory.glob("*/step_*.jsonl"):
        if int(samples.stem.removeprefix("step_")) > step:
            samples.unlink()


def prm_scoring(directory: str, tokenizer: Tokenizer, mesh: Mesh, rules: Rules):
    """The compiled PRM score of sampled rows (`rlreason.search.prm.completion_scores`) of the `rlreason prm`
    folder `directory`, its params on the mesh: (prompt_tokens, prompt_mask, tokens, completion_mask) -> [B].
    Raises ConfigError when its tokenizer is not the policy's."""
    prm = load_prm(directory, mesh, rules)
    check_same_tokenizer(prm, tokenizer, "eval.prm", directory)
    table = jnp.asarray(delimiter_table(tokenizer, prm.delimiter))
    # The params are arguments, not constants of the program, so that they stay split over the mesh.
    scores = jax.jit(laid_out(lambda params, head, *rows: completion_scores(params, head, prm.cfg, table, *rows),
                              model_layout(mesh, rules)))
    return functools.partial(scores, prm.params, prm.head)


def build_evaluator(cfg: Config, model_cfg: ModelConfig, tokenizer: Tokenizer, mesh: Mesh, rules: Rules) -> Evaluator:
    """The Evaluator of eval.sets, read and encoded now (before anything compiles)."""
    return Evaluator(cfg, model_cfg, tokenizer, mesh, rules, load_eval_sets(cfg, tokenizer))
