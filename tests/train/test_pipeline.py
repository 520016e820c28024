"""`rlreason pipeline`: a pipeline file is checked before any stage runs (errors name the stage and key), stages
are wired to the outputs they name, and a pipeline stopped midway skips its finished stages and resumes the
stage it was in from that stage's checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from tiny_run import TINY_OVERRIDES

from rlreason import cli
from rlreason.config import ConfigError, load_pipeline
from rlreason.train.pipeline import REPORT, stage_configs

# A short R1 pipeline on the tiny task: cold start, GRPO, rejection sampling, on-policy distillation, SFT.
STAGES = [
    {"name": "base", "kind": "pretrain"},
    {"name": "cold_data", "kind": "worked_solutions", "overrides": ["task.num_train=16"]},
    {"name": "cold_start", "kind": "sft", "model": "base", "data": "cold_data"},
    {"name": "rl", "kind": "grpo", "model": "cold_start"},
    {"name": "rs_data", "kind": "generate", "model": "rl", "overrides": ["generate.num_prompts=32"]},
    {"name": "distilled", "kind": "distill", "model": "base", "teacher": "rl"},
    {"name": "rs_sft", "kind": "sft", "model": "rl", "data": "rs_data", "overrides": ["checkpoint.every_steps=2"]},
]
SETTINGS = [*TINY_OVERRIDES, "sampling.max_completion_length=40", "generate.temperature=0.5", "sft.seq_len=96",
            "train.steps=3", "generate.num_samples=4", "generate.require_format=false"]


def pipeline_file(tmp_path, stages=STAGES, name="pipeline.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"config": "configs/demo_cpu.yaml", "out_dir": str(tmp_path / "run"),
                                    "stages": stages}))
    return path


@pytest.mark.parametrize("stages, message", [
    ([{"name": "a", "kind": "sft", "model": "b", "data": "c"}], "stages[0].model' must name an earlier stage that "
                                                                 "makes a model (none yet), got 'b'"),
    ([{"name": "a", "kind": "pretrain"}, {"name": "a", "kind": "pretrain"}], "stages[1].name' names stage 'a' twice"),
    ([{"name": "a", "kind": "pretrain"}, {"name": "b", "kind": "sft", "model": "a", "data": "a"}],
     "stages[1].data' must name an earlier stage that makes a data (none yet), got 'a'"),
    ([{"name": "a", "kind": "pretrain", "model": "x"}], "stages[0].model' is not used for kind 'pretrain'"),
    ([{"name": "a", "kind": "grpo"}], "stages[0].model' must name an earlier stage for kind 'grpo'"),
    ([{"name": "a", "kind": "finetune"}], "stages[0].kind' got 'finetune'; allowed values: 'pretrain'"),
])
def test_a_bad_pipeline_names_the_stage_key(tmp_path, stages, message):
    path = pipeline_file(tmp_path, stages)
    with pytest.raises(ConfigError, match="pipeline file") as error:
        load_pipeline(path)
    assert message in str(error.value)


def test_stages_are_wired_to_what_they_name(tmp_path):
    configs = stage_configs(load_pipeline(pipeline_file(tmp_path)), SETTINGS)
    run = tmp_path / "run"
    assert configs["cold_start"].train.model_dir == f"{run}/base/model"
    assert configs["cold_start"].sft.path == f"{run}/cold_data/data.jsonl"
    assert configs["rs_sft"].train.model_dir == f"{run}/rl/model" and configs["rs_sft"].train.out_dir == f"{run}/rs_sft"
    assert configs["distilled"].distill.teacher == f"{run}/rl/model"
    assert configs["rs_data"].generate.num_prompts == 32 and configs["rl"].generate.num_prompts == 1024
    bad = STAGES[:3] + [{**STAGES[3], "overrides": ["grpo.los_type=dapo"]}]
    with pytest.raises(ConfigError, match=r"stage 'rl' \(stages\[3\]\): config key 'grpo.los_type' is unknown"):
        stage_configs(load_pipeline(pipeline_file(tmp_path, bad)), SETTINGS)


def records(run_dir) -> list[dict]:
    return [json.loads((run_dir / stage["name"] / "stage.json").read_text()) for stage in STAGES]


def test_a_stopped_pipeline_resumes_the_stage_it_was_in(tmp_path, capsys):
    path = pipeline_file(tmp_path)
    assert cli.main(["pipeline", str(path), *SETTINGS]) == 0
    run = tmp_path / "run"
    finished = records(run)
    assert [record["name"] for record in finished] == [stage["name"] for stage in STAGES]
    assert finished[1]["rows"] == 200 and finished[4]["rows"] > 0  # the command line's task.num_train wins
    assert all("eval/heldout/pass@1_lenient" in record["eval"] for record in finished if record["kind"] != "generate"
               and record["kind"] != "worked_solutions")
    report = (run / REPORT).read_text()
    assert all(f"| {stage['name']} | {stage['kind']} |" in report for stage in STAGES)
    # As if killed during the last stage after its checkpoint of step 2: no stage.json, no model, checkpoint 2.
    shutil.rmtree(run / "rs_sft" / "checkpoints" / "3")
    shutil.rmtree(run / "rs_sft" / "model")
    (run / "rs_sft" / "stage.json").unlink()
    stamps = {stage["name"]: (run / stage["name"] / "stage.json").stat().st_mtime_ns for stage in STAGES[:-1]}
    capsys.readouterr()
    assert cli.main(["pipeline", str(path), *SETTINGS]) == 0
    out = capsys.readouterr().out
    assert all(f"stage {index}/{len(STAGES)} {stage['name']!r} finished earlier; not rerun" in out
               for index, stage in enumerate(STAGES[:-1], start=1))
    assert f"resuming from checkpoint {run / 'rs_sft' / 'checkpoints' / '2'}" in out
    assert {name: (run / name / "stage.json").stat().st_mtime_ns for name in stamps} == stamps
    assert records(run)[-1]["eval"] == finished[-1]["eval"]  # the resumed stage ends where the first run did


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].joinpath("configs", "pipelines").glob("*.yaml")),
                         ids=lambda path: path.name)
def test_shipped_pipelines_load(path):
    configs = stage_configs(load_pipeline(path), [])
    assert list(configs) == [stage.name for stage in load_pipeline(path).stages]
