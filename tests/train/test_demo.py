"""The demo end to end: a fast smoke run by default, the full learning claim as a slow test."""

import json
from pathlib import Path

import pytest

from tiny_run import tiny_config
from rlreason.config import load_config
from rlreason.train.demo import run_demo

ROOT = Path(__file__).parents[2]


def test_demo_writes_summary_report_and_plots(tmp_path):
    summary = run_demo(tiny_config("train.steps=3", "pretrain.steps=30"), tmp_path, show_progress=False)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    for key in ("base_pass@1", "rl_pass@1", "base_format", "rl_format", "base_pass@4", "rl_pass@4"):
        assert 0.0 <= on_disk[key] <= 1.0, key
    report = (tmp_path / "report.md").read_text()
    for name in ("reward", "accuracy", "completion_length", "entropy", "kl"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        assert f"![{name}.png]({name}.png)" in report
    assert "| pass@1 |" in report and "| format |" in report
    assert len((tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "grpo" / "model" / "model.yaml").is_file()


@pytest.mark.slow
def test_full_demo_lifts_pass_at_1_by_25_points(tmp_path):
    """The README's main job: GRPO with rule-based rewards only must lift held-out pass@1 by >= 25 points."""
    summary = run_demo(load_config(ROOT / "configs" / "demo_cpu.yaml"), tmp_path, show_progress=False)
    assert summary["rl_pass@1"] - summary["base_pass@1"] >= 0.25, summary
    assert summary["rl_format"] > summary["base_format"]
