"""`rlreason pipeline FILE`: the R1 recipe (or any chain of stages) as one resumable run.

A pipeline file (rlreason.config.PipelineConfig) names a run config, an out_dir and the stages in order. Each
stage runs its command with the run config, the stage's overrides, then the command line's overrides, and the
wiring below, all built and validated before the first stage starts:
  pretrain          a model from scratch (rlreason.train.pretrain)       -> <stage>/model
  worked_solutions  the task's correct worked solutions in the R1 format, task.num_train of them: a cold-start
                    SFT set, as R1's curated long chains of thought (synthetic tasks) -> <stage>/data.jsonl
  sft               SFT of stage `model`'s model on stage `data`'s rows   -> <stage>/model
  grpo              GRPO from stage `model`'s model (rlreason.train.loop) -> <stage>/model
  generate          rejection sampling with stage `model`'s model         -> <stage>/data.jsonl
  star              STaR rounds from stage `model`'s model                -> <stage>/round_<rounds>/sft/model
  distill           on-policy distillation of stage `model`'s model by stage `teacher`'s -> <stage>/model
Training stages run with train.out_dir = out_dir/<stage>, so their checkpoints, metrics and evaluations are
there. A stage that starts from a model takes its architecture from it (the run config's model.* describe the
pretrain stages' models), and keeps the run config's run-time model settings (dtype, remat, ...). After a stage that makes a model, that model is evaluated on eval.sets.

Resuming: a finished stage has out_dir/<stage>/stage.json (its output, evaluation and wall time) and is not
rerun; a stage killed midway is run again, and a training stage then resumes from its checkpoints. After every
stage out_dir/pipeline.md is rewritten: one table of each stage's held-out accuracy before and after it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable

from etils import epath

from rlreason.config import (STAGE_OUTPUTS, Config, ConfigError, PipelineConfig, StageConfig, load_config,
                             load_pipeline)
from rlreason.data import synthetic
from rlreason.models.store import load_model_config, run_settings_only
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules
from rlreason.storage import storage_path
from rlreason.train.commands import model_eval_metrics
from rlreason.train.compile_cache import use_compilation_cache
from rlreason.train.distill import distill
from rlreason.train.generate import generate
from rlreason.train.jsonl import write_rows
from rlreason.train.loop import train
from rlreason.train.pretrain import pretrain
from rlreason.train.sft import sft
from rlreason.train.star import star

RECORD = "stage.json"
REPORT = "pipeline.md"


def stage_output(pipeline: PipelineConfig, stage: StageConfig, cfg: Config) -> str:
    """Where `stage` leaves what it makes (the module docstring's table)."""
    stage_dir = f"{pipeline.out_dir}/{stage.name}"
    if stage.kind == "star":
        return f"{stage_dir}/round_{cfg.star.rounds}/sft/model"
    return f"{stage_dir}/model" if STAGE_OUTPUTS[stage.kind] == "model" else f"{stage_dir}/data.jsonl"


def stage_configs(pipeline: PipelineConfig, overrides: list[str]) -> dict[str, Config]:
    """Every stage's run config, wired to the outputs of the stages it names; a bad override names its stage."""
    configs: dict[str, Config] = {}
    outputs: dict[str, str] = {}
    for index, stage in enumerate(pipeline.stages):
        wiring = [f"train.out_dir={pipeline.out_dir}/{stage.name}"]
        if stage.model:
            wiring.append(f"train.model_dir={outputs[stage.model]}")
        if stage.data:
            wiring.append(f"sft.path={outputs[stage.data]}")
        if stage.teacher:
            wiring.append(f"distill.teacher={outputs[stage.teacher]}")
        try:
            cfg = load_config(pipeline.config, [*stage.overrides, *overrides, *wiring])
        except ConfigError as error:
            raise ConfigError(f"stage {stage.name!r} (stages[{index}]): {error}") from None
        if stage.kind == "worked_solutions" and cfg.task.name not in synthetic.SYNTHETIC_TASKS:
            raise ConfigError(f"stage {stage.name!r} (stages[{index}]): kind 'worked_solutions' needs a synthetic "
                              f"task ({', '.join(synthetic.SYNTHETIC_TASKS)}), got task.name={cfg.task.name!r}; "
                              f"give an SFT file as a generate stage's output instead")
        if stage.model:  # the model directory fixes the architecture (the run config's is another model's)
            cfg = dataclasses.replace(cfg, model=run_settings_only(cfg.model))
        configs[stage.name] = cfg
        outputs[stage.name] = stage_output(pipeline, stage, cfg)
    return configs


def _pretrain(cfg: Config, stage: StageConfig, pipeline: PipelineConfig, output: str) -> None:
    if stage.tokenizer_from:
        teacher = storage_path(pipeline.out_dir) / stage.tokenizer_from / "model"
        cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(
            cfg.tokenizer, path=str(teacher / load_model_config(teacher)[1])))
    pretrain(cfg, output, show_progress=False)


def _worked_solutions(cfg: Config, stage: StageConfig, pipeline: PipelineConfig, output: str) -> None:
    problems = synthetic.generate(cfg.task, cfg.task.num_train, cfg.task.seed)
    path = storage_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rows(path, [{"prompt": problem.question, "response": synthetic.r1_completion(problem),
                       "answer": problem.answer} for problem in problems])


def _train(run: Callable) -> Callable:
    return lambda cfg, stage, pipeline, output: run(cfg, show_progress=False)


def _generate(cfg: Config, stage: StageConfig, pipeline: PipelineConfig, output: str) -> None:
    generate(cfg, cfg.train.model_dir, output, show_progress=False)


def _star(cfg: Config, stage: StageConfig, pipeline: PipelineConfig, output: str) -> None:
    star(cfg, cfg.train.model_dir, cfg.train.out_dir, show_progress=False)


# Stage kind -> (run config, stage, pipeline, output path) -> None; it leaves its output at the path.
STAGES: dict[str, Callable] = {"pretrain": _pretrain, "worked_solutions": _worked_solutions, "sft": _train(sft),
                               "grpo": _train(train), "generate": _generate, "star": _star,
                               "distill": _train(distill)}


def heldout_summary(metrics: dict[str, float]) -> dict[str, float]:
    """The first eval set's pass@1 (lenient, strict) and format rate, for the report."""
    first = next(key.split("/")[1] for key in metrics)
    return {name: metrics[f"eval/{first}/{key}"] for name, key in
            (("lenient", "pass@1_lenient"), ("strict", "pass@1_strict"), ("format", "format"))}


def write_report(out_dir: epath.Path, records: list[dict]) -> None:
    """pipeline.md: per stage, the held-out accuracy of its input model and of its output."""
    evaluated = {record["output"]: record["eval"] for record in records if record.get("eval")}
    lines = ["# Pipeline", "", "Held-out pass@1 (lenient / strict) and format rate of each stage's model, "
             "before (the model it starts from) and after.", "",
             "| stage | kind | from | before: lenient / strict / format | after: lenient / strict / format | "
             "rows | time |", "|---|---|---|---|---|---|---|"]
    show = lambda metrics: ("—" if not metrics else " / ".join(  # noqa: E731
        f"{value:.3f}" for value in heldout_summary(metrics).values()))
    for record in records:
        before = evaluated.get(record["input"]) if record["input"] else None
        lines.append(f"| {record['name']} | {record['kind']} | {record['from'] or '—'} | {show(before)} | "
                     f"{show(record.get('eval'))} | {record.get('rows', '—')} | {record['seconds']:.0f} s |")
    (out_dir / REPORT).write_text("\n".join(lines) + "\n")


def run_pipeline(path: str, overrides: list[str]) -> tuple[list[dict], epath.Path]:
    """Runs (or resumes) every stage; returns (their records, the stage.json contents; the report's path)."""
    pipeline = load_pipeline(path)
    configs = stage_configs(pipeline, overrides)
    # JAX fixes the cache directory at its first compilation: the first stage's setting serves the whole run.
    use_compilation_cache(configs[pipeline.stages[0].name].train.compilation_cache_dir)
    out_dir = storage_path(pipeline.out_dir)
    records: list[dict] = []
    for number, stage in enumerate(pipeline.stages, start=1):
        cfg = configs[stage.name]
        record_path = out_dir / stage.name / RECORD
        if record_path.is_file():
            print(f"pipeline: stage {number}/{len(pipeline.stages)} {stage.name!r} finished earlier; not rerun")
            records.append(json.loads(record_path.read_text()))
            continue
        print(f"pipeline: stage {number}/{len(pipeline.stages)} {stage.name!r} ({stage.kind})", flush=True)
        output = stage_output(pipeline, stage, cfg)
        started = time.perf_counter()
        STAGES[stage.kind](cfg, stage, pipeline, output)
        record = {"name": stage.name, "kind": stage.kind, "from": stage.model, "output": output,
                  "input": cfg.train.model_dir if stage.model else "", "seconds": time.perf_counter() - started}
        if STAGE_OUTPUTS[stage.kind] == "model":
            record["eval"] = model_eval_metrics(cfg, output, make_mesh(cfg.mesh), axis_rules(cfg.mesh))
        else:
            record["rows"] = len(storage_path(output).read_text().splitlines())
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=1))
        records.append(record)
        write_report(out_dir, records)
    return records, out_dir / REPORT
