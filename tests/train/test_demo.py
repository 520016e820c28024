"""The demo end to end: a fast smoke run by default, the full learning claim as a slow test."""

import json
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread

from tiny_run import tiny_config
from rlreason.config import load_config
from rlreason.train.demo import run_demo

ROOT = Path(__file__).parents[2]


def test_demo_reports_lenient_and_strict_accuracy_next_to_a_random_reward_control(tmp_path):
    summary = run_demo(tiny_config("train.steps=3", "pretrain.steps=30"), tmp_path, show_progress=False)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert list(summary)[:3] == ["base_pass@1_lenient", "rl_pass@1_lenient", "control_pass@1_lenient"]
    for run in ("base", "rl", "control"):
        for metric in ("pass@1_lenient", "pass@4_lenient", "maj@4_lenient", "pass@1_strict", "pass@4_strict",
                       "format"):
            assert 0.0 <= summary[f"{run}_{metric}"] <= 1.0, (run, metric)
        assert summary[f"{run}_pass@1_lenient"] >= summary[f"{run}_pass@1_strict"]
    for run in ("rl", "control"):
        assert summary[f"{run}_gain_lenient_points"] == pytest.approx(
            100 * (summary[f"{run}_pass@1_lenient"] - summary["base_pass@1_lenient"]))
    assert summary["control"] == "shuffle" and summary["grpo_steps"] == 3
    assert summary["seconds"]["total"] >= summary["seconds"]["grpo_control"] > 0
    # The control is the same run on shuffled rewards.
    assert yaml.safe_load((tmp_path / "control" / "config.yaml").read_text())["grpo"]["reward_control"] == "shuffle"
    assert yaml.safe_load((tmp_path / "grpo" / "config.yaml").read_text())["grpo"]["reward_control"] == "none"
    for run in ("grpo", "control"):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and {"accuracy_strict", "accuracy_lenient", "format_rate"} <= rows[0].keys()
    assert (tmp_path / "grpo" / "model" / "model.yaml").is_file()

    report = (tmp_path / "report.md").read_text()
    # The GRPO run's own report (`rlreason report`), its control's curves dashed next to its own.
    for name in ("reward", "accuracy", "completion_length", "entropy", "kl", "clipping", "step_time",
                 "test_time_0", "test_time_1"):
        assert imread(tmp_path / "plots" / f"{name}.png").shape[0] >= 320, name
        assert f"![{name}](plots/{name}.png)" in report
    assert "## Test-time compute: after GRPO, held-out set" in report
    assert "## Samples: base model, held-out set" in report and "## Samples at step 3 (training)" in report
    assert "| metric | base model | after GRPO | control (shuffle rewards) |" in report
    lines = report.splitlines()
    table = [line for line in lines if line.startswith("| pass@") or line.startswith("| maj@")]
    assert table[0] == ("| pass@1, lenient | " + " | ".join(f"{summary[f'{run}_pass@1_lenient']:.3f}"
                                                          for run in ("base", "rl", "control")) + " |")  # leads
    assert any(line.startswith("| pass@1, strict |") for line in table)
    assert "| R1 format compliance |" in report


@pytest.mark.slow
def test_full_demo_lifts_lenient_pass_at_1_by_25_points_and_the_control_does_not(tmp_path):
    """The README's main job: GRPO with rule-based rewards only must lift held-out lenient pass@1 by >= 25 points,
    while the same run on shuffled rewards stays within a few points of the base model."""
    summary = run_demo(load_config(ROOT / "configs" / "demo_cpu.yaml"), tmp_path, show_progress=False)
    assert summary["rl_gain_lenient_points"] >= 25, summary
    assert abs(summary["control_gain_lenient_points"]) <= 5, summary


def test_forgotten_carries_need_an_addition_task(tmp_path):
    from rlreason.config import ConfigError
    from rlreason.train.pretrain import pretrain

    with pytest.raises(ValueError, match=r"pretrain.carry_slip_rate=0.8 .* task.name='countdown'"):
        pretrain(tiny_config("task.name=countdown"), tmp_path)
    with pytest.raises(ConfigError, match=r"'pretrain.carry_slip_rate' must be in \[0, 1\], got 1.5"):
        tiny_config("pretrain.carry_slip_rate=1.5")
