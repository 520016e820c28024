"""The demo's report: summary.json, report.md and PNG plots of the training curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

# (metric key in metrics.jsonl, plot title)
CURVES = (("reward", "reward"), ("accuracy", "accuracy (training samples)"),
          ("completion_length", "completion length (tokens)"), ("entropy", "entropy (nats/token)"),
          ("kl", "KL to the reference"))


def smooth(values, window: int = 9) -> np.ndarray:
    """Centred moving average of a 1-D series, same length (edges padded with the end values)."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def plot_curves(history: list[dict], out_dir: Path) -> list[str]:
    """One PNG per curve in CURVES; returns the file names written."""
    names = []
    steps = [row["step"] for row in history]
    for key, title in CURVES:
        if not history or key not in history[0]:
            continue
        figure, axis = plt.subplots(figsize=(5, 3.2), dpi=100)
        values = [row[key] for row in history]
        axis.plot(steps, values, linewidth=1, alpha=0.35)
        axis.plot(steps, smooth(values), linewidth=1.8)
        axis.set_xlabel("GRPO step")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        name = f"{key}.png"
        figure.savefig(out_dir / name)
        plt.close(figure)
        names.append(name)
    return names


def write_report(out_dir: Path, base: dict, trained: dict, history: list[dict], samples: dict[str, list[dict]],
                 header: str) -> dict:
    """Writes summary.json, report.md and the plots into `out_dir`; returns the summary."""
    k = base["samples_per_problem"]
    summary = {"base_pass@1": base["pass@1"], "rl_pass@1": trained["pass@1"],
               f"base_pass@{k}": base[f"pass@{k}"], f"rl_pass@{k}": trained[f"pass@{k}"],
               f"base_maj@{k}": base[f"maj@{k}"], f"rl_maj@{k}": trained[f"maj@{k}"],
               "base_format": base["format"], "rl_format": trained["format"],
               "base_mean_length": base["mean_length"], "rl_mean_length": trained["mean_length"],
               "num_eval_problems": base["num_problems"], "samples_per_problem": k, "grpo_steps": len(history)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = plot_curves(history, out_dir)
    lines = [header, "", f"Held-out set: {base['num_problems']} problems, {k} samples each.", "",
             "| metric | base model | after GRPO |", "| --- | --- | --- |"]
    for key in ("pass@1", f"pass@{k}", f"maj@{k}", "format", "mean_length"):
        lines.append(f"| {key} | {base[key]:.3f} | {trained[key]:.3f} |")
    lines += ["", "## Training curves", ""] + [f"![{name}]({name})" for name in plots]
    for title, rows in samples.items():
        lines += ["", f"## Samples: {title}", ""]
        lines += [f"- `{row['question']}` -> `{row['completion']}` ({'right' if row['correct'] else 'wrong'})"
                  for row in rows]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary
