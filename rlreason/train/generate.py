"""`rlreason generate`: rejection sampling. k completions per prompt from a model, scored by the run's verifiers;
the verified ones are written as an SFT set (the R1 pipeline's rejection-sampling stage, STaR's data, and
distillation data when the model is a teacher).

Sampling and scoring are the Evaluator's (rlreason.train.evaluate): sharded over the mesh, compiled once, sample
j of prompt i drawn from fold_in(fold_in(key(train.seed), i), j), so a rerun writes the same file. What is kept
is `generate.*`'s rule (rlreason.config.GenerateConfig): `select_verified` below.

Each output row (JSONL, one per kept completion; `rlreason sft` reads prompt and response by default):
  prompt     the question, untemplated (SFT renders it with tokenizer.template)
  response   the completion's text
  answer     the gold answer
  reward     the weighted reward; rewards: {function: score}
  length     completion tokens
  source     provenance: model (path), step (0 for a model directory), seed, split, problem (index in the
             split), sample (0..k-1), temperature, num_samples
"""

from __future__ import annotations

import dataclasses

from rlreason.config import Config, GenerateConfig
from rlreason.data.encoding import PromptSet, load_prompts
from rlreason.data.eval_sets import EvalSet
from rlreason.parallel.distributed import initialize, is_main_process
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules
from rlreason.storage import storage_path
from rlreason.train.commands import evaluated_model
from rlreason.train.evaluate import Evaluator
from rlreason.train.jsonl import write_rows


def verification(settings: GenerateConfig) -> tuple[str, str]:
    """(the Evaluator sample-row key that says a sample is verified, the summary key of its pass@1): strict
    (answer and format) with require_format, else the answer alone."""
    return ("strict", "pass@1_strict") if settings.require_format else ("correct", "pass@1")


def select_verified(rows: list[dict], settings: GenerateConfig) -> list[dict]:
    """The kept samples of one prompt's `rows` (Evaluator sample rows, in sampling order): verified
    (`verification`), one per distinct completion text, the shortest first with `shortest` (ties in sampling
    order), at most max_per_prompt."""
    verified = [row for row in rows if row[verification(settings)[0]]]
    distinct = list({row["completion"].strip(): row for row in reversed(verified)}.values())[::-1]
    if settings.shortest:
        distinct.sort(key=lambda row: row["length"])
    return distinct[:settings.max_per_prompt]


def sft_row(row: dict, provenance: dict) -> dict:
    return {"prompt": row["question"], "response": row["completion"], "answer": row["gold"], "reward": row["reward"],
            "rewards": row["rewards"], "length": row["length"],
            "source": {**provenance, "problem": row["problem"], "sample": row["sample"]}}


def rejection_sample(cfg: Config, params, model_cfg, tokenizer, mesh, rules, prompts: PromptSet, provenance: dict,
                     questions: list[str] | None = None, show_progress: bool = False) -> tuple[list[list[dict]], dict]:
    """generate.num_samples samples of each prompt of `prompts`, scored and filtered by `select_verified`.

    Returns (the kept output rows of each prompt, a summary: prompts, samples, verified, kept, prompts_with_kept,
    pass@1 of the samples). `questions`: the question each prompt's rows are written with (default: the one it
    was sampled with; STaR's rationalization samples with a hint and writes the question without it)."""
    settings = cfg.generate
    prompt_set = EvalSet("generate", prompts, cfg.grpo.rewards, cfg.grpo.accuracy_reward)
    sampling_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, num_samples=settings.num_samples,
                                                                     temperature=settings.temperature))
    evaluator = Evaluator(sampling_cfg, model_cfg, tokenizer, mesh, rules, [prompt_set])
    result = evaluator.evaluate(params, prompt_set, show_progress=show_progress and is_main_process())
    k, (verdict, pass_at_1) = settings.num_samples, verification(settings)
    kept = []
    for problem, start in enumerate(range(0, len(result.rows), k)):
        rows = select_verified(result.rows[start:start + k], settings)
        if questions is not None:
            rows = [{**row, "question": questions[problem]} for row in rows]
        kept.append([sft_row(row, provenance) for row in rows])
    summary = {"prompts": len(prompts), "samples": len(result.rows),
               "verified": sum(row[verdict] for row in result.rows), "kept": sum(map(len, kept)),
               "prompts_with_kept": sum(bool(rows) for rows in kept),
               "pass@1": result.summary[pass_at_1]}
    return kept, summary


def generation_prompts(cfg: Config, tokenizer) -> PromptSet:
    """The task's generate.split prompts: generate.num_prompts of them, or the split's size (task.num_train or
    task.num_eval)."""
    split = cfg.generate.split
    count = cfg.generate.num_prompts or (cfg.task.num_train if split == "train" else cfg.task.num_eval)
    return load_prompts(cfg.task, split, count, tokenizer, cfg.tokenizer.template, cfg.sampling.max_prompt_length)


def provenance_of(cfg: Config, model: str, step: int, split: str) -> dict:
    return {"model": str(model), "step": step, "seed": cfg.train.seed, "split": split,
            "temperature": cfg.generate.temperature, "num_samples": cfg.generate.num_samples}


def write_kept(out_file: str, kept: list[list[dict]]) -> None:
    """The kept rows, prompt by prompt, as JSONL (main process only)."""
    if is_main_process():
        path = storage_path(out_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_rows(path, [row for rows in kept for row in rows])


def generate(cfg: Config, model: str, out_file: str, show_progress: bool = True) -> dict:
    """Samples, filters and writes `out_file` (the module docstring); returns `rejection_sample`'s summary."""
    settings = cfg.generate
    initialize(cfg.distributed)
    mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
    params, model_cfg, tokenizer, step = evaluated_model(cfg, model, mesh, rules)
    prompts = generation_prompts(cfg, tokenizer)
    kept, summary = rejection_sample(cfg, params, model_cfg, tokenizer, mesh, rules, prompts,
                                     provenance_of(cfg, model, step, settings.split), show_progress=show_progress)
    write_kept(out_file, kept)
    return summary
