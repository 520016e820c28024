"""`rlreason search`: test-time search methods side by side at their generated-token cost, and MCTS results as
expert-iteration data.

On the first set of eval.sets, with the policy (`--model`: a model directory or a `rlreason train` checkpoint)
and the process reward model of eval.prm (a `rlreason prm` folder, whose delimiter splits steps):
  1. sampling: eval.num_samples samples per problem at eval.temperature, the evaluation's rows, from which
     rlreason.train.test_time computes pass@k, maj@k, best-of-k by the verifier's reward and by the PRM, and
     PRM-weighted voting for k = 1, 2, 4, ... (cost: k times the mean sample length);
  2. step-level beam search (rlreason.search.beam) of every width in search.beam_widths, search.beam_expand
     next steps per beam, scored by the PRM;
  3. MCTS (rlreason.search.mcts) of every count in search.simulations, search.mcts_expand samples per expansion,
     valued by the PRM, answering with the most-visited path;
each scored by the evaluation's verifiers (lenient and strict), its cost the tokens the sampler generated per
problem. Nothing in 1-3 reads the gold answers except the final verdicts (and best-of-k by the verifier, an
oracle shown for reference). Every search point is compared with maj@k of plain samples at the smallest k that
costs at least as many tokens (no such k: more than eval.num_samples samples would be needed; left blank).
  4. with search.train_problems > 0: MCTS valued by verified rollouts (search.num_rollouts continuations checked
     against the gold answer, as Math-Shepherd labels are) on that many training problems; each problem's first
     search.sft_per_problem verified completions become SFT rows (`rlreason sft` reads them: expert iteration);
     the control set holds as many rows, the completions the searches chose for the first training problems,
     verified or not: training on it tells what the verification adds.

Writes to OUT:
  search.json        every point: method, setting, tokens per problem, lenient and strict accuracy, and maj@k at
                     the same budget; the policy, PRM and eval set
  search.md          the same as Markdown tables
  search.png         accuracy against generated tokens per problem, one line per method
  samples.jsonl      the evaluation's per-sample rows (with prm_score)
  beam_<width>.jsonl, mcts_<simulations>.jsonl   a row per problem: its completion, verdicts and tokens generated
  mcts_sft.jsonl     (train_problems > 0) the expert-iteration rows, `rlreason generate`'s format
  mcts_sft_control.jsonl   (train_problems > 0) the control rows
The command runs on one process; the sampler's rows are split over the mesh's batch axes.
"""

from __future__ import annotations

import json
from typing import Callable

import jax
import numpy as np
from matplotlib.figure import Figure

from rlreason.config import Config, ConfigError
from rlreason.data.encoding import PromptSet, load_prompts
from rlreason.data.eval_sets import EvalSet, load_eval_set
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules
from rlreason.progress import progress_bar
from rlreason.sampling.sampler import SamplingParams
from rlreason.search.beam import beam_search
from rlreason.search.continuation import padded_rows
from rlreason.search.mcts import (PRMEvaluator, RolloutEvaluator, Verified, mcts_search, sft_rows,
                                  verified_completions)
from rlreason.search.prm import check_same_tokenizer, load_prm, prm_scorer
from rlreason.search.steps import delimiter_table
from rlreason.storage import storage_path
from rlreason.tokenizers import Tokenizer
from rlreason.train.commands import evaluated_model
from rlreason.train.evaluate import Evaluator, scored_functions
from rlreason.train.jsonl import write_rows
from rlreason.train.test_time import METHOD_NAMES, METHODS, VERDICTS, sample_curves, save_accuracy_plot
from rlreason.verifiers.base import get_reward_fn
from rlreason.verifiers.bridge import detokenize, make_scorer
from rlreason.verifiers.lenient import verdicts

SEARCH_METHODS = {"beam": "PRM beam search", "mcts": "MCTS (PRM values)"}


def prompt_ids(prompts: PromptSet) -> list[list[int]]:
    """Each problem's templated prompt token ids, padding removed."""
    return [tokens[mask.astype(bool)].tolist() for tokens, mask in zip(prompts.prompt_tokens, prompts.prompt_mask)]


def judge(tokenizer: Tokenizer, eval_set: EvalSet, completions: list[list[int]], cfg: Config) -> list[dict]:
    """One row per problem of `eval_set`: its completion (token ids from a search) scored as the evaluation scores
    samples: {"problem", "completion", "lenient", "strict", "format", "length"}."""
    functions = scored_functions(eval_set)
    columns = [reward.name for reward in functions]
    score = make_scorer(tokenizer, functions, cfg.grpo.verifier_timeout_s, memory_limit_mb=cfg.grpo.verifier_memory_mb)
    tokens, mask = padded_rows(completions, max(1, max(map(len, completions))), tokenizer.pad_id)
    # padded_rows pads on the left; the scorer reads completions through their mask, so the side does not matter.
    scores = np.asarray(score(eval_set.prompts.prompt_tokens, eval_set.prompts.prompt_mask, tokens, mask,
                              eval_set.prompts.gold_bytes))
    passed = verdicts(scores, columns, columns[:len(eval_set.rewards)], eval_set.accuracy_reward)
    return [{"problem": problem, "completion": detokenize(tokenizer, tokens[problem], mask[problem]),
             **{key: bool(passed[key][problem]) for key in (*VERDICTS, "format")}, "length": len(ids)}
            for problem, ids in enumerate(completions)]


def search_point(method: str, setting: int, rows: list[dict], tokens_generated: list[int]) -> dict:
    """A search's point: its accuracy in each verdict and its mean generated tokens per problem."""
    return {"method": method, "setting": setting, "tokens": float(np.mean(tokens_generated)),
            **{verdict: float(np.mean([row[verdict] for row in rows])) for verdict in VERDICTS}}


def majority_at_budget(samples: list[dict], tokens: float, verdict: str) -> tuple[int, float] | None:
    """(k, maj@k) for the smallest k whose plain samples cost at least `tokens` per problem; None past the last."""
    for point in samples:
        if point["tokens"] >= tokens:
            return point["k"], point[f"maj@k_{verdict}"]
    return None


def with_baselines(points: list[dict], samples: list[dict]) -> list[dict]:
    """The search points, each with the maj@k of plain samples at its budget (`majority_at_budget`)."""
    compared = []
    for point in points:
        extra = {}
        for verdict in VERDICTS:
            found = majority_at_budget(samples, point["tokens"], verdict)
            extra[f"maj_k_at_budget_{verdict}"] = None if found is None else found[0]
            extra[f"maj_at_budget_{verdict}"] = None if found is None else found[1]
        compared.append({**point, **extra})
    return compared


def markdown(samples: list[dict], points: list[dict]) -> list[str]:
    """search.md's tables: the plain samples' curves by k, then the searches with maj@k at their budget."""
    methods = [method for method in METHODS if f"{method}@k_lenient" in samples[0]]
    lines = ["| k | tokens / problem | " + " | ".join(f"{METHOD_NAMES[method]}, {verdict}" for verdict in VERDICTS
                                                     for method in methods) + " |",
             "| --- | --- |" + " --- |" * (len(methods) * len(VERDICTS))]
    lines += [f"| {point['k']} | {point['tokens']:.0f} | " + " | ".join(
        f"{point[f'{method}@k_{verdict}']:.3f}" for verdict in VERDICTS for method in methods) + " |"
        for point in samples]

    def baseline(point: dict, verdict: str) -> str:
        k = point[f"maj_k_at_budget_{verdict}"]
        return "beyond the samples" if k is None else f"{point[f'maj_at_budget_{verdict}']:.3f} (k={k})"

    lines += ["", "| search | setting | tokens / problem | lenient | maj@k lenient at budget | strict | "
                  "maj@k strict at budget |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {SEARCH_METHODS[point['method']]} | {point['setting']} | {point['tokens']:.0f} | "
              f"{point['lenient']:.3f} | {baseline(point, 'lenient')} | {point['strict']:.3f} | "
              f"{baseline(point, 'strict')} |" for point in points]
    return lines


def plot(samples: list[dict], points: list[dict], path, title: str) -> None:
    """Lenient accuracy against generated tokens per problem (log scale): a line per sampling method and per
    search; strict accuracy dashed."""
    figure = Figure(figsize=(6.5, 4.2), dpi=100)
    axis = figure.subplots()
    styles = dict(zip(VERDICTS, ("-", "--")))
    color = 0
    for method in METHODS:
        if f"{method}@k_lenient" not in samples[0]:
            continue
        for verdict, style in styles.items():
            axis.plot([point["tokens"] for point in samples], [point[f"{method}@k_{verdict}"] for point in samples],
                      style, marker="o", markersize=3, color=f"C{color}", label=f"{METHOD_NAMES[method]}, {verdict}")
        color += 1
    for method, name in SEARCH_METHODS.items():
        mine = [point for point in points if point["method"] == method]
        for verdict, style in styles.items():
            axis.plot([point["tokens"] for point in mine], [point[verdict] for point in mine], style, marker="s",
                      markersize=4, color=f"C{color}", label=f"{name}, {verdict}")
        color += 1
    save_accuracy_plot(figure, axis, title, path)


def gold_verifier(cfg: Config, prompts: PromptSet, tokenizer: Tokenizer) -> Callable[[int, str], float]:
    """verify(problem, completion text) -> 1.0 when grpo.accuracy_reward accepts it against the gold answer."""
    reward = get_reward_fn(cfg.grpo.accuracy_reward)
    questions = [detokenize(tokenizer, tokens, mask) for tokens, mask in zip(prompts.prompt_tokens,
                                                                              prompts.prompt_mask)]
    return lambda problem, text: float(reward(questions[problem], text, prompts.examples[problem].answer,
                                              prompts.examples[problem].metadata) == 1.0)


def search(cfg: Config, model: str, out_dir: str, show_progress: bool = True) -> dict:
    """Runs the command (module docstring); returns what search.json holds."""
    settings = cfg.search
    if not cfg.eval.prm:
        raise ConfigError("config key 'eval.prm' is empty: rlreason search guides beam search and MCTS by a process "
                          "reward model; make one with `rlreason prm CONFIG --model POLICY --out DIR` and set "
                          "eval.prm=DIR")
    mesh = make_mesh(cfg.mesh)
    rules = axis_rules(cfg.mesh)
    params, model_cfg, tokenizer, _ = evaluated_model(cfg, model, mesh, rules)
    prm = load_prm(cfg.eval.prm, mesh, rules)
    check_same_tokenizer(prm, tokenizer, "eval.prm", cfg.eval.prm)
    score = prm_scorer(prm.params, prm.head, prm.cfg)
    table = delimiter_table(tokenizer, prm.delimiter)
    eval_set = load_eval_set(cfg, 0, tokenizer)
    out = storage_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = jax.random.key(cfg.train.seed)
    sampling = SamplingParams.from_config(cfg.sampling, temperature=cfg.eval.temperature)

    sample_rows = Evaluator(cfg, model_cfg, tokenizer, mesh, rules, [eval_set]).evaluate(
        params, eval_set, show_progress).rows
    write_rows(out / "samples.jsonl", sample_rows)
    samples = sample_curves(sample_rows)

    prompts = prompt_ids(eval_set.prompts)
    shape = dict(is_delimiter=table, max_steps=settings.max_steps, max_step_tokens=settings.max_step_tokens,
                 sampling=sampling, mesh=mesh, rules=rules)
    runs = [("beam", width) for width in settings.beam_widths] + [("mcts", count) for count in settings.simulations]
    points = []
    for method, setting in progress_bar(runs, desc="search", show=show_progress):
        key = jax.random.fold_in(jax.random.fold_in(rng, list(SEARCH_METHODS).index(method)), setting)
        if method == "beam":
            results = beam_search(params, model_cfg, tokenizer, prompts, score, beam=setting,
                                  expand=settings.beam_expand, keys=jax.random.split(key, len(prompts)), **shape)
        else:
            results = mcts_search(params, model_cfg, tokenizer, prompts, PRMEvaluator(score), simulations=setting,
                                  expand=settings.mcts_expand, rng=key, c_puct=settings.c_puct, **shape)
        rows = judge(tokenizer, eval_set, [result.completion for result in results], cfg)
        for row, result in zip(rows, results):
            row["tokens_generated"] = result.tokens_generated
        write_rows(out / f"{method}_{setting}.jsonl", rows)
        points.append(search_point(method, setting, rows, [result.tokens_generated for result in results]))
    points = with_baselines(points, samples)
    summary = {"model": model, "prm": cfg.eval.prm, "set": eval_set.name, "problems": len(prompts),
               "samples_per_problem": cfg.eval.num_samples, "temperature": cfg.eval.temperature,
               "sampling": samples, "search": points}
    if settings.train_problems:
        summary["expert_iteration"] = expert_iteration_rows(cfg, model, params, model_cfg, tokenizer, table, sampling,
                                                            mesh, rules, out, rng)
    (out / "search.json").write_text(json.dumps(summary, indent=2))
    (out / "search.md").write_text("\n".join(markdown(samples, points)) + "\n")
    plot(samples, points, out / "search.png", f"{eval_set.name}: {len(prompts)} problems")
    return summary


def expert_iteration_rows(cfg: Config, model: str, params, model_cfg, tokenizer: Tokenizer, table: np.ndarray,
                          sampling: SamplingParams, mesh, rules, out, rng: jax.Array) -> dict:
    """Step 4 of the module docstring: writes OUT/mcts_sft.jsonl; returns its counts."""
    settings = cfg.search
    prompts = load_prompts(cfg.task, "train", settings.train_problems, tokenizer, cfg.tokenizer.template,
                           cfg.sampling.max_prompt_length)
    verify = gold_verifier(cfg, prompts, tokenizer)
    evaluator = RolloutEvaluator(verify, settings.num_rollouts, cfg.sampling.max_completion_length)
    results = mcts_search(params, model_cfg, tokenizer, prompt_ids(prompts), evaluator, table,
                          settings.train_simulations, settings.mcts_expand, settings.max_steps,
                          settings.max_step_tokens, sampling, jax.random.fold_in(rng, len(SEARCH_METHODS)),
                          c_puct=settings.c_puct, mesh=mesh, rules=rules)
    verified = verified_completions(results, tokenizer, verify)
    rows = sft_rows(verified, [example.question for example in prompts.examples],
                    [example.answer for example in prompts.examples], settings.sft_per_problem,
                    provenance={"model": model, "simulations": settings.train_simulations})
    write_rows(out / "mcts_sft.jsonl", rows)
    # The control: as many rows, the searches' chosen completions of the first problems, verified or not.
    chosen = [[Verified(result.completion, result.logprobs, text, verify(problem, text), 0)]
              for problem, result in enumerate(results)
              for text in [detokenize(tokenizer, np.asarray(result.completion, np.int64),
                                      np.ones(len(result.completion), bool))]][:len(rows)]
    write_rows(out / "mcts_sft_control.jsonl",
               sft_rows(chosen, [example.question for example in prompts.examples],
                        [example.answer for example in prompts.examples], 1, min_reward=-np.inf,
                        provenance={"model": model, "simulations": settings.train_simulations, "control": True}))
    chosen_right = [bool(found) and found[0].reward >= 1.0 and result.finished
                    for found, result in zip(verified, results)]
    return {"problems": len(prompts), "rows": len(rows),
            "problems_with_rows": len({row["source"]["problem"] for row in rows}),
            "chosen_right": float(np.mean(chosen_right)),
            "tokens_per_problem": float(np.mean([result.tokens_generated for result in results]))}
