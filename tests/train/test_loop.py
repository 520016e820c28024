"""Evaluation inside `rlreason train`: the eval/ files, the metrics (metrics.jsonl and TensorBoard), the same
numbers as `rlreason eval` on the step's checkpoint, and a resume that cuts the eval files back and computes
them again the same."""

from __future__ import annotations

import json
import shutil

import pytest

from tiny_run import tiny_config
from rlreason.train.evaluate import EVAL_DIR, summary_names
from rlreason.train.loop import train

STEPS = 2


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_config(model_dir, out_dir, *overrides):
    return tiny_config(f"train.model_dir={model_dir}", f"train.out_dir={out_dir}", f"train.steps={STEPS}",
                       "train.eval_every=1", "checkpoint.every_steps=1", "checkpoint.keep_last=2",
                       "checkpoint.every_seconds=0", "checkpoint.keep_best=1",
                       "checkpoint.best_metric=eval/heldout/pass@1_lenient", "grpo.optim.learning_rate=0.003",
                       *overrides)


@pytest.fixture(scope="module")
def evaluated_run(tiny_base_model, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("evaluated_run")
    train(run_config(tiny_base_model, out_dir), show_progress=False)
    return out_dir


def test_eval_steps_write_their_summaries_samples_and_metrics(evaluated_run):
    cfg = tiny_config()
    k, problems = cfg.eval.num_samples, cfg.task.num_eval
    summaries = read_jsonl(evaluated_run / EVAL_DIR / "heldout.jsonl")
    assert [row["step"] for row in summaries] == [1, 2]
    assert all(set(row) == {"step", *summary_names(k)} for row in summaries)
    for row in summaries:
        samples = read_jsonl(evaluated_run / EVAL_DIR / "heldout" / f"step_{row['step']}.jsonl")
        assert len(samples) == problems * k
        assert row["pass@1_lenient"] == pytest.approx(sum(sample["lenient"] for sample in samples) / len(samples))
    metrics = read_jsonl(evaluated_run / "metrics.jsonl")
    for metric_row, summary in zip(metrics, summaries, strict=True):
        assert {key: metric_row[f"eval/heldout/{key}"] for key in summary_names(k)} == {
            key: summary[key] for key in summary_names(k)}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(evaluated_run / "tensorboard"))
    events.Reload()
    logged = events.Scalars("eval/heldout/pass@1_lenient")
    assert [(event.step, event.value) for event in logged] == [
        (row["step"], pytest.approx(row["pass@1_lenient"], rel=1e-6)) for row in summaries]


def test_rlreason_eval_of_a_checkpoint_gives_the_numbers_of_its_step(evaluated_run, tmp_path):
    from rlreason.train.commands import run_eval

    results = run_eval(tiny_config(), str(evaluated_run / "checkpoints" / str(STEPS)), str(tmp_path), False)
    in_loop = read_jsonl(evaluated_run / EVAL_DIR / "heldout.jsonl")[-1]
    assert read_jsonl(tmp_path / EVAL_DIR / "heldout.jsonl") == [in_loop]
    assert results["heldout"].rows == read_jsonl(evaluated_run / EVAL_DIR / "heldout" / f"step_{STEPS}.jsonl")


def test_a_resume_cuts_the_eval_files_back_and_evaluates_again_the_same(evaluated_run, tiny_base_model, tmp_path):
    shutil.copytree(evaluated_run, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / str(STEPS))  # resume from step 1: step 2's eval is redone
    (tmp_path / EVAL_DIR / "heldout" / f"step_{STEPS}.jsonl").write_text("not what step 2 computes\n")
    train(run_config(tiny_base_model, tmp_path), show_progress=False)
    for name in ("heldout.jsonl", "heldout/step_1.jsonl", f"heldout/step_{STEPS}.jsonl"):
        assert (tmp_path / EVAL_DIR / name).read_text() == (evaluated_run / EVAL_DIR / name).read_text(), name
    assert [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
