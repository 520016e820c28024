"""`rlreason report RUN_DIR` on run directories written by hand in the layout of `rlreason train` (the demo's
test covers the report of a real run): which plots it draws, their size, and what report.md says."""

import json

import numpy as np
import pytest
from matplotlib.image import imread

from rlreason.cli import main
from rlreason.train.report import PANELS, write_run_report


def write_jsonl(path, rows, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + tail)


def metric_row(step):
    return {"step": step, "reward": 0.1 * step, "rewards/exact_answer": 0.1 * step, "rewards/r1_format": None,
            "accuracy_lenient": 0.2, "accuracy_strict": 0.1, "format_rate": 0.5, "completion_length": 10.0 + step,
            "entropy": 1.0, "kl": 0.0, "clip_ratio_low": 0.0, "clip_ratio_high": 0.01, "clip_ratio_region": 0.01,
            "grad_norm": 1.0, "l2_params": 30.0 + 0.01 * step, "l2_updates": 0.01, "step_time_s": 2.0,
            "mfu": 0.3, "mismatch/token_prob_error": 0.001}


def eval_rows(question_answers):
    """Per-sample rows (eval/<set>/step_<N>.jsonl): (question, [(lenient, strict, length, reward, answer)])."""
    return [{"question": question, "gold": "4", "completion": f"<answer>{answer}</answer>", "correct": strict,
             "strict": strict, "lenient": lenient, "format": True, "length": length, "reward": reward,
             "answer": answer, "lenient_answer": answer}
            for question, samples in question_answers for lenient, strict, length, reward, answer in samples]


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    # A kill mid-write leaves a cut last line: dropped.
    write_jsonl(run / "metrics.jsonl", [metric_row(step) for step in range(1, 11)], tail='{"step": 11, "rew')
    write_jsonl(run / "samples.jsonl", [
        {"step": 10, "prompt": "What is 2+2?", "completion": f"answer {value}", "length": 3,
         "rewards": {"exact_answer": value, "r1_format": None if value == 0.5 else 1.0}, "advantage": value - 0.5}
        for value in (0.0, 1.0, 0.5, 0.25)])
    write_jsonl(run / "eval" / "held_out.jsonl", [
        {"step": 0, "pass@1_lenient": 0.25, "pass@1_strict": 0.125, "format": 0.5, "mean_length": 9.5},
        {"step": 10, "pass@1_lenient": 0.5, "pass@1_strict": 0.25, "format": 0.75, "mean_length": 8.0}])
    write_jsonl(run / "eval" / "held_out" / "step_0.jsonl", eval_rows([("2+2", [(False, False, 5, 0.0, "5")] * 2)]))
    write_jsonl(run / "eval" / "held_out" / "step_10.jsonl", eval_rows([
        ("2+2", [(True, True, 4, 1.0, "4"), (False, False, 12, 0.0, "5")]),
        ("1+1", [(True, False, 6, 0.5, "2"), (False, False, 2, 0.0, None)])]))
    return run


def test_report_draws_every_logged_curve_the_eval_table_and_test_time_compute(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run_dir / 'report.md'}"
    report = (run_dir / "report.md").read_text()
    assert "10 steps logged (steps 1-10); 4 logged samples; evaluated sets: held_out." in report
    drawn = [panel.name for panel in PANELS]
    for name in drawn + ["eval_held_out"]:
        assert f"![{name}](plots/{name}.png)" in report
        shape = imread(run_dir / "plots" / f"{name}.png").shape
        assert shape[:2] == (320, 500), name
    curve = imread(run_dir / "plots" / "test_time_held_out.png")
    assert curve.shape[:2] == (400, 600) and curve.std() > 0.05
    assert "![test_time_held_out](plots/test_time_held_out.png)" in report
    # The summaries as logged, one row per evaluation.
    assert "| step | pass@1_lenient | pass@1_strict | format | mean_length |" in report
    assert "| 10 | 0.500 | 0.250 | 0.750 | 8.000 |" in report
    # Test-time compute of the newest evaluation (step 10): mean length 6, so k=2 costs 12 tokens.
    # pass@1 lenient (1/2 + 1/2) / 2, strict (1/2 + 0) / 2; maj@2 lenient: "4" and "5" tie (1/2), "2" alone
    # (1) -> 3/4, strict: 1/2 and 0 -> 1/4; best@2: the reward-1 and reward-0.5 samples -> 1, strict 1/2.
    assert "## Test-time compute: held_out, step 10" in report
    assert "| 1 | 6 | 0.500 | 0.500 | 0.500 | 0.250 | 0.250 | 0.250 |" in report
    assert "| 2 | 12 | 1.000 | 0.750 | 1.000 | 0.500 | 0.250 | 0.500 |" in report
    # Budget 4: right and at most 4 tokens: only the first sample -> 1/4 in both views; cost (4+4+4+2)/4.
    assert "| 4 | 3.5 | 0.250 | 0.250 |" in report
    # Best and worst training samples of the last step by their summed scores (2, 1.25, 1 | 0.5).
    best, worst = report.split("Best:\n")[1].split("\n\nWorst:\n")
    assert [line.split("answer ")[1][:4] for line in best.splitlines()] == ["1.0 ", "0.25", "0.0 "]
    assert [line.split("answer ")[1][:3] for line in worst.splitlines()[:1]] == ["0.5"]
    assert best.splitlines()[0].endswith("'r1_format': 1.0}, advantage 0.5)")
    assert "- `` 2+2 `` -> `` <answer>4</answer> `` (right)" in report
    assert "- `` 1+1 `` -> `` <answer>2</answer> `` (right, outside the format)" in report


def test_a_curve_is_drawn_only_when_the_run_logged_it(tmp_path):
    rows = [{key: value for key, value in metric_row(step).items() if not key.startswith(("mismatch/", "kl"))}
            for step in range(1, 4)]
    for row in rows:
        row["entropy"] = None  # logged, never finite
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    report = write_run_report(tmp_path).read_text()
    assert sorted(path.stem for path in (tmp_path / "plots").iterdir()) == sorted(
        panel.name for panel in PANELS if panel.name not in ("mismatch", "kl", "entropy"))
    assert "evaluated sets: none (train.eval_every)" in report and "## Samples" not in report
    reward = imread(tmp_path / "plots" / "reward.png")
    assert reward.shape[:2] == (320, 500) and np.std(reward) > 0.05


@pytest.mark.parametrize("make, says", [
    (lambda tmp: tmp / "missing", "'{tmp}/missing' is not a directory: pass a run directory"),
    (lambda tmp: tmp, "'{tmp}' has no metrics.jsonl: pass a run directory"),
])
def test_a_bad_run_directory_is_refused_with_exit_2(make, says, tmp_path, capsys):
    assert main(["report", str(make(tmp_path))]) == 2
    assert capsys.readouterr().err.strip() == f"rlreason report: error: {says.format(tmp=tmp_path)} (the " \
        "train.out_dir of `rlreason train`, or the grpo/ folder of `rlreason demo`)"


def test_a_broken_log_line_is_named(run_dir, capsys):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:3] + ["{oops"] + lines[3:]) + "\n")
    assert main(["report", str(run_dir)]) == 2
    assert f"rlreason report: error: {run_dir / 'metrics.jsonl'}:4 is not a JSON object" in capsys.readouterr().err
    write_jsonl(run_dir / "metrics.jsonl", [metric_row(1)])
    write_jsonl(run_dir / "eval" / "held_out" / "step_10.jsonl", eval_rows([("2+2", [(True, True, 4, 1.0, "4")] * 2),
                                                                            ("1+1", [(True, True, 4, 1.0, "2")] * 3)]))
    assert main(["report", str(run_dir)]) == 2
    assert (f"rlreason report: error: {run_dir / 'eval' / 'held_out' / 'step_10.jsonl'}: rows 3-5 hold 3 samples of "
            "one question, other problems 2") in capsys.readouterr().err
