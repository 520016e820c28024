"""`rlreason star`: STaR, the self-taught reasoner (Zelikman et al. 2022), or expert iteration without the hint.

Round r = 1 .. star.rounds, with model M (the base for r = 1):
  1. rejection sampling of the task's generate.split prompts with M (rlreason.train.generate; generation
     seeded with train.seed + r, so rounds draw different samples) -> the verified rationales;
  2. rationalization (star.rationalize): each prompt with nothing kept is sampled again with the gold answer
     in its question (star.hint), and the verified completions are kept under the question without the hint;
  3. SFT on both (rlreason.train.sft) from the base model (star.restart_from_base) or from M, giving the next M;
  4. evaluation of the new M on eval.sets.
Under --out DIR: round_<r>/kept.jsonl, round_<r>/rationalized.jsonl, round_<r>/data.jsonl (their union, the
SFT set), round_<r>/sft/ (the SFT run, its model/ the round's model), and star.jsonl, one row per round (round
0: the base model) with: round, model, prompts, kept, rationalized, rationalized_share (of the SFT set),
train_pass@1 (of the round's samples), and the evaluation as eval/<set>/<metric>.

Resuming: a round with a row in star.jsonl is done and not rerun; an unfinished round's generation reruns (the
same samples: it is seeded) and its SFT resumes from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json

from rlreason.config import Config, ConfigError
from rlreason.data.encoding import encode_rows
from rlreason.parallel.distributed import initialize, is_main_process
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules
from rlreason.progress import progress_bar
from rlreason.storage import storage_path
from rlreason.train.commands import evaluated_model, model_eval_metrics
from rlreason.train.generate import generation_prompts, provenance_of, rejection_sample, write_kept
from rlreason.train.jsonl import append_rows
from rlreason.train.sft import sft

RESULTS = "star.jsonl"


def hinted(cfg: Config, prompts, problems: list[int], tokenizer):
    """(the prompt set of `problems` with the gold answer in each question, or None when no hinted prompt fits;
    each of its prompts' question without the hint). A hinted prompt longer than sampling.max_prompt_length is
    left out, with a warning."""
    originals = {prompts.examples[index].location: prompts.examples[index].question for index in problems}
    examples = [dataclasses.replace(prompts.examples[index], question=cfg.star.hint.format(
        question=prompts.examples[index].question, answer=prompts.examples[index].answer)) for index in problems]
    task = dataclasses.replace(cfg.task, on_bad_row="skip")
    try:
        hinted_prompts = encode_rows(examples, task, tokenizer, cfg.tokenizer.template,
                                     cfg.sampling.max_prompt_length, "STaR's hinted prompts")
    except ConfigError:  # none fits: nothing to rationalize this round (the warning listed them)
        return None, []
    return hinted_prompts, [originals[example.location] for example in hinted_prompts.examples]


def run_round(cfg: Config, base: str, model: str, round_index: int, out_dir, mesh, rules) -> tuple[str, dict]:
    """One round (the module docstring's steps 1-3) from `model`; returns (the new model, its row so far)."""
    round_dir = out_dir / f"round_{round_index}"
    round_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + round_index))
    params, model_cfg, tokenizer, step = evaluated_model(round_cfg, model, mesh, rules)
    prompts = generation_prompts(cfg, tokenizer)
    provenance = provenance_of(round_cfg, model, step, cfg.generate.split)
    kept, summary = rejection_sample(round_cfg, params, model_cfg, tokenizer, mesh, rules, prompts, provenance)
    rationalized = []
    failed = [index for index, rows in enumerate(kept) if not rows]
    hint_prompts, questions = hinted(cfg, prompts, failed, tokenizer) if cfg.star.rationalize and failed else (None, [])
    if hint_prompts is not None:
        rationalized, _ = rejection_sample(round_cfg, params, model_cfg, tokenizer, mesh, rules, hint_prompts,
                                           {**provenance, "rationalized": True}, questions)
    write_kept(str(round_dir / "kept.jsonl"), kept)
    write_kept(str(round_dir / "rationalized.jsonl"), rationalized)
    write_kept(str(round_dir / "data.jsonl"), kept + rationalized)
    num_kept, num_rationalized = sum(map(len, kept)), sum(map(len, rationalized))
    sft_cfg = dataclasses.replace(
        cfg, sft=dataclasses.replace(cfg.sft, path=str(round_dir / "data.jsonl")),
        train=dataclasses.replace(cfg.train, model_dir=base if cfg.star.restart_from_base else model,
                                  out_dir=str(round_dir / "sft")))
    sft(sft_cfg, show_progress=False)
    row = {"round": round_index, "model": str(round_dir / "sft" / "model"), "prompts": len(prompts),
           "kept": num_kept, "rationalized": num_rationalized,
           "rationalized_share": num_rationalized / max(num_kept + num_rationalized, 1),
           "train_pass@1": summary["pass@1"]}
    return row["model"], row


def star(cfg: Config, base: str, out: str, show_progress: bool = True) -> list[dict]:
    """Runs (or resumes) the rounds; returns star.jsonl's rows."""
    initialize(cfg.distributed)
    mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
    out_dir = storage_path(out)
    results = out_dir / RESULTS
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    if not rows:
        rows = [{"round": 0, "model": str(base), **model_eval_metrics(cfg, base, mesh, rules)}]
        if is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
            append_rows(results, rows)
    model = rows[-1]["model"]
    bar = progress_bar(range(len(rows), cfg.star.rounds + 1), desc="star", initial=len(rows) - 1,
                       total=cfg.star.rounds, unit="round", show=show_progress and is_main_process())
    for round_index in bar:
        model, row = run_round(cfg, base, model, round_index, out_dir, mesh, rules)
        row.update(model_eval_metrics(cfg, model, mesh, rules))
        rows.append(row)
        if is_main_process():
            append_rows(results, [row])
        bar.set_postfix(kept=row["kept"], rationalized=row["rationalized"])
    bar.close()
    return rows
