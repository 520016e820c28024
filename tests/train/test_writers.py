"""TensorBoard and Weights & Biases writers of a real `rlreason train` run, read back with their own readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlreason.train.loop import train
from tiny_run import tiny_config


@pytest.fixture(scope="module")
def run(tiny_base_model, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("writers")
    cfg = tiny_config(f"train.model_dir={tiny_base_model}", f"train.out_dir={out_dir}", "train.steps=2",
                      "train.sample_every=1", "train.report_to=[tensorboard, wandb]", "checkpoint.every_steps=0")
    train(cfg, show_progress=False)
    return out_dir


def test_tensorboard_events_hold_every_step_metric_and_the_sample_tables(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    for name in ("reward", "loss", "grad_norm", "completion_length", "learning_rate", "l2_params", "l2_updates"):
        logged = events.Scalars(name)
        assert [event.step for event in logged] == [1, 2]
        assert [event.value for event in logged] == pytest.approx([row[name] for row in metrics], rel=1e-6)
    # Model FLOPs over a measured matmul peak: a step of tiny matmuls and a decode loop reaches a small part of it.
    assert all(0 < row["mfu"] < 1 for row in metrics)
    texts = events.Tensors("samples")
    assert [event.step for event in texts] == [1, 2]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    first_table = texts[0].tensor_proto.string_val[0].decode()
    assert first_table.startswith("| prompt | completion | length |")
    assert samples[0]["prompt"].replace("\n", "<br>") in first_table
    assert first_table.splitlines()[0].endswith("| advantage |")
    assert f"| {samples[0]['advantage']:.3g} |" in first_table.splitlines()[2]


def test_wandb_offline_run_records_the_metrics_and_samples(run):
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    content = files[0].read_bytes()
    for name in (b"reward", b"grad_norm", b"samples", b"completion"):
        assert name in content, name
