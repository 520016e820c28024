"""The demo's report: summary.json, report.md and PNG plots of the training curves.

Lenient accuracy leads (the answer right wherever the completion writes it), then strict (format and answer,
what the reward pays), then format compliance; the control run, trained on rewards that carry no information,
sits next to the real one so that a reader sees how much of the gain the true reward explains.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

# (metric key in metrics.jsonl, plot title)
CURVES = (("reward", "reward (what the run trains on)"),
          ("accuracy_lenient", "lenient accuracy (training samples)"),
          ("accuracy_strict", "strict accuracy (training samples)"), ("format_rate", "R1 format compliance"),
          ("completion_length", "completion length (tokens)"), ("entropy", "entropy (nats/token)"),
          ("kl", "KL to the reference"))


def evaluation_keys(k: int) -> tuple[tuple[str, str], ...]:
    """(key of an evaluation summary, its name in the report), in the report's order."""
    return (("pass@1_lenient", "pass@1, lenient"), (f"pass@{k}_lenient", f"pass@{k}, lenient"),
            (f"maj@{k}_lenient", f"maj@{k}, lenient"), ("pass@1_strict", "pass@1, strict"),
            (f"pass@{k}_strict", f"pass@{k}, strict"), (f"maj@{k}_strict", f"maj@{k}, strict"),
            ("format", "R1 format compliance"), ("mean_length", "mean completion length (tokens)"))


def smooth(values, window: int = 9) -> np.ndarray:
    """Centred moving average of a 1-D series, same length (edges padded with the end values)."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def plot_curves(histories: dict[str, list[dict]], out_dir: Path) -> list[str]:
    """One PNG per curve in CURVES, a line per run of `histories` (label -> metric rows); returns the file names."""
    names = []
    for key, title in CURVES:
        runs = {label: history for label, history in histories.items() if history and key in history[0]}
        if not runs:
            continue
        # A Figure of its own, not pyplot's: no GUI backend is needed, and a notebook's backend is left alone.
        figure = Figure(figsize=(5, 3.2), dpi=100)
        axis = figure.subplots()
        for color, (label, history) in zip(("C0", "C1", "C2"), runs.items()):
            steps, values = [row["step"] for row in history], [row[key] for row in history]
            axis.plot(steps, values, linewidth=1, alpha=0.3, color=color)
            axis.plot(steps, smooth(values), linewidth=1.8, color=color, label=label)
        axis.set_xlabel("GRPO step")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if len(runs) > 1:
            axis.legend(fontsize=8)
        figure.tight_layout()
        name = f"{key}.png"
        figure.savefig(out_dir / name)
        names.append(name)
    return names


def summarize(evaluations: dict[str, dict], grpo_steps: int, control: str, seconds: dict[str, float]) -> dict:
    """summary.json's content: `<run>_<metric>` for each evaluated run ("base", "rl", "control") and metric of
    `evaluation_keys`, lenient first, plus the gains in points, the set-up and the wall time of each phase."""
    k = evaluations["base"]["samples_per_problem"]
    summary = {f"{run}_{key}": evaluation[key] for key, _ in evaluation_keys(k)
               for run, evaluation in evaluations.items()}
    for run in [run for run in evaluations if run != "base"]:
        for view in ("lenient", "strict"):
            gain = summary[f"{run}_pass@1_{view}"] - summary[f"base_pass@1_{view}"]
            summary[f"{run}_gain_{view}_points"] = 100 * gain
    summary.update(control=control, num_eval_problems=evaluations["base"]["num_problems"], samples_per_problem=k,
                   grpo_steps=grpo_steps, seconds=seconds)
    return summary


def write_report(out_dir: Path, evaluations: dict[str, dict], histories: dict[str, list[dict]],
                 samples: dict[str, list[dict]], header: str, control: str, seconds: dict[str, float]) -> dict:
    """Writes summary.json, report.md and the plots into `out_dir`; returns the summary.

    `evaluations`: run ("base", "rl", optionally "control") -> `evaluate` summary; `histories`: curve label ->
    metric rows; `samples`: section title -> evaluation rows; `control`: the control's `grpo.reward_control`;
    `seconds`: phase -> wall time.
    """
    steps = max(len(history) for history in histories.values())
    summary = summarize(evaluations, steps, control, seconds)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = plot_curves(histories, out_dir)
    base, k = evaluations["base"], evaluations["base"]["samples_per_problem"]
    titles = {"base": "base model", "rl": "after GRPO", "control": f"control ({control} rewards)"}
    runs = list(evaluations)
    lines = [header, "", f"Held-out set: {base['num_problems']} problems, {k} samples each. Lenient: the answer "
             "is right wherever the completion writes it (answer tag, last boxed expression, last number). Strict: "
             "the R1 format and the right answer inside `<answer>`, what the reward pays.", ""]
    gains = [f"GRPO moved lenient pass@1 by {summary['rl_gain_lenient_points']:+.1f} points "
             f"({base['pass@1_lenient']:.3f} -> {evaluations['rl']['pass@1_lenient']:.3f}), strict pass@1 by "
             f"{summary['rl_gain_strict_points']:+.1f} points."]
    if "control" in evaluations:
        gains.append(f"The same run with {control} rewards moved lenient pass@1 by "
                     f"{summary['control_gain_lenient_points']:+.1f} points and strict pass@1 by "
                     f"{summary['control_gain_strict_points']:+.1f}: the part of the gain that needs no "
                     f"information about the answers.")
    lines += [" ".join(gains), "", "| metric | " + " | ".join(titles[run] for run in runs) + " |",
              "| --- |" + " --- |" * len(runs)]
    for key, name in evaluation_keys(k):
        lines.append(f"| {name} | " + " | ".join(f"{evaluations[run][key]:.3f}" for run in runs) + " |")
    lines += ["", "## Training curves", ""] + [f"![{name}]({name})" for name in plots]
    for title, rows in samples.items():
        lines += ["", f"## Samples: {title}", ""]
        lines += [f"- `{row['question']}` -> `{row['completion']}` ({verdict(row)})" for row in rows]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def verdict(row: dict) -> str:
    """How an evaluation row scored: right (strict), right outside the format (lenient only), or wrong."""
    if row["strict"]:
        return "right"
    return "right, outside the format" if row["lenient"] else "wrong"
