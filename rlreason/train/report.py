"""Run reports: `rlreason report RUN_DIR` and the demo's report, report.md with PNG plots under plots/.

A run directory (train.out_dir) holds metrics.jsonl (a row per step), samples.jsonl (a few completions every
train.sample_every steps), and with train.eval_every an `eval/<set>.jsonl` (a summary row per evaluation) and
`eval/<set>/step_<N>.jsonl` (the evaluation's per-sample rows). The report shows what of it there is: the
training curves (each panel only when the run logged its metrics), the evaluations over steps, the test-time
compute of the newest evaluation (rlreason.train.test_time), and the best and worst samples.

Lenient accuracy leads (the answer right wherever the completion writes it), then strict (format and answer,
what the reward pays); the demo's control run, trained on rewards that carry no information, sits next to the
real one so that a reader sees how much of the gain the true reward explains.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rlreason.train.test_time import (SampleRowsError, budget_curve, markdown_tables, plot_test_time_compute,
                                      problems, sample_curves)

PLOTS = "plots"  # the PNGs' folder, next to report.md
SHOWN_SAMPLES = 3  # best and worst samples shown of each kind
VERDICT_TEXT = ("Lenient: the answer is right wherever the completion writes it (answer tag, last boxed "
                "expression, last number). Strict: the format and the right answer inside `<answer>`, what the "
                "reward pays.")


@dataclasses.dataclass(frozen=True)
class Panel:
    """One training-curve plot: `name`.png, with a line per metric key (and per run) that the run logged."""

    name: str
    title: str
    keys: tuple[str, ...]  # metrics.jsonl keys; a key ending in "/" stands for every key with that prefix


PANELS = (
    Panel("reward", "reward: total and per function", ("reward", "rewards/")),
    Panel("accuracy", "accuracy on the training samples", ("accuracy_lenient", "accuracy_strict", "format_rate")),
    Panel("completion_length", "completion length (tokens)", ("completion_length", "terminated_length")),
    Panel("entropy", "entropy (nats/token)", ("entropy",)),
    Panel("kl", "KL to the reference", ("kl",)),
    Panel("clipping", "clipped token fractions", ("clip_ratio_low", "clip_ratio_high", "clip_ratio_region")),
    Panel("mismatch", "sampler / trainer mismatch", ("mismatch/", "off_policy/")),
    Panel("grad_norm", "gradient norm", ("grad_norm",)),
    Panel("norms", "global norms of the params and of the step's update", ("l2_params", "l2_updates")),
    Panel("step_time", "step time (s)", ("step_time_s",)),
    Panel("mfu", "model FLOPs utilisation", ("mfu",)),
)


class RunReportError(ValueError):
    """A run directory that cannot be reported on: missing, a log line that does not parse, or per-sample
    evaluation rows that do not group into problems."""


@dataclasses.dataclass(frozen=True)
class Run:
    """What a run directory logged. evaluations: set -> summary rows; eval_samples: set -> (step, rows of the
    newest evaluation's step_<N>.jsonl)."""

    path: Path
    metrics: list[dict]
    samples: list[dict]
    evaluations: dict[str, list[dict]]
    eval_samples: dict[str, tuple[int, list[dict]]]


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file. An unparseable last line is dropped (a run killed mid-write leaves one);
    any other raises RunReportError naming the file and line."""
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise RunReportError(f"{path}:{number} is not a JSON object ({error.msg}): fix or delete the "
                                     f"line") from None
    return rows


def read_run(run_dir: str | Path) -> Run:
    """The logs of `run_dir`; raises RunReportError when it is not a run directory."""
    path = Path(run_dir)
    if not (path / "metrics.jsonl").is_file():
        what = "has no metrics.jsonl" if path.is_dir() else "is not a directory"
        raise RunReportError(f"'{path}' {what}: pass a run directory (the train.out_dir of `rlreason train`, or "
                             f"the grpo/ folder of `rlreason demo`)")
    samples = path / "samples.jsonl"
    evaluations, eval_samples = {}, {}
    for summary in sorted((path / "eval").glob("*.jsonl")):
        evaluations[summary.stem] = read_jsonl(summary)
        steps = {int(match[1]): file for file in (path / "eval" / summary.stem).glob("step_*.jsonl")
                 if (match := re.fullmatch(r"step_(\d+)\.jsonl", file.name))}
        if steps:
            newest = steps[max(steps)]
            eval_samples[summary.stem] = (max(steps), read_jsonl(newest))
            try:
                problems(eval_samples[summary.stem][1])
            except SampleRowsError as error:
                raise RunReportError(f"{newest}: {error}") from None
    return Run(path, read_jsonl(path / "metrics.jsonl"), read_jsonl(samples) if samples.is_file() else [],
               evaluations, eval_samples)


def smooth(values, window: int = 9) -> np.ndarray:
    """Centred moving average of a 1-D series, same length (edges padded with the end values)."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def panel_keys(panel: Panel, metrics: list[dict]) -> list[str]:
    """The keys of `panel` that `metrics` holds with a finite value somewhere, in the panel's order."""
    logged = list(dict.fromkeys(key for row in metrics for key in row))
    keys = [key for wanted in panel.keys for key in logged
            if (key.startswith(wanted) if wanted.endswith("/") else key == wanted)]
    return [key for key in keys if any(row.get(key) is not None and np.isfinite(row[key]) for row in metrics)]


def new_figure(size=(5, 3.2)):
    """A Figure of its own, not pyplot's: no GUI backend is needed, and a notebook's backend is left alone."""
    figure = Figure(figsize=size, dpi=100)
    return figure, figure.subplots()


def save(figure, axis, path: Path, legend: bool) -> None:
    axis.grid(alpha=0.3)
    if legend:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def plot_panel(panel: Panel, runs: dict[str, list[dict]], path: Path) -> bool:
    """`panel` as a PNG at `path`: a colour per key, a line style per run (label -> metric rows), the raw
    series faint under its moving average. False (nothing written) when no run logged any of its keys."""
    lines = [(label, key, history) for label, history in runs.items() for key in panel_keys(panel, history)]
    if not lines:
        return False
    figure, axis = new_figure()
    colors = {key: f"C{index}" for index, key in enumerate(dict.fromkeys(key for _, key, _ in lines))}
    styles = dict(zip(runs, ("-", "--", ":", "-.")))
    for label, key, history in lines:
        steps = [row["step"] for row in history]
        values = np.array([np.nan if row.get(key) is None else row[key] for row in history], dtype=float)
        axis.plot(steps, values, styles[label], linewidth=1, alpha=0.3, color=colors[key])
        name = key if len(runs) == 1 else f"{key}, {label}"
        axis.plot(steps, smooth(values), styles[label], linewidth=1.8, color=colors[key], label=name)
    axis.set_xlabel("GRPO step")
    axis.set_title(panel.title)
    save(figure, axis, path, legend=len(lines) > 1)
    return True


def image(name: str) -> str:
    """report.md's link to plots/<name>.png."""
    return f"![{name}]({PLOTS}/{name}.png)"


def curve_section(runs: dict[str, list[dict]], out_dir: Path) -> list[str]:
    """The training curves: a PNG per panel that some run logged."""
    lines = ["## Training curves", ""]
    for panel in PANELS:
        if plot_panel(panel, runs, out_dir / PLOTS / f"{panel.name}.png"):
            lines.append(image(panel.name))
    return lines


def evaluation_section(name: str, rows: list[dict], out_dir: Path) -> list[str]:
    """An eval set's summaries over steps: a table (the rows' keys, in their order) and a plot of pass@1."""
    keys = list(dict.fromkeys(key for row in rows for key in row if key != "step"))
    lines = [f"## Evaluation: {name}", "", "| step | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for row in rows:
        cells = [f"{row[key]:.3f}" if isinstance(row.get(key), float) else str(row.get(key, "")) for key in keys]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    plotted = [key for key in keys if key.startswith(("pass@", "maj@"))]
    if plotted:
        figure, axis = new_figure()
        for key in plotted:
            axis.plot([row["step"] for row in rows], [row.get(key, np.nan) for row in rows], marker="o",
                      markersize=3, label=key)
        axis.set_xlabel("GRPO step")
        axis.set_title(f"evaluation: {name}")
        save(figure, axis, out_dir / PLOTS / f"eval_{name}.png", legend=True)
        lines += ["", image(f"eval_{name}")]
    return lines


def test_time_section(title: str, name: str, rows: list[dict], out_dir: Path) -> list[str]:
    """The test-time-compute tables and plot of one evaluation's per-sample rows."""
    samples, budgets = sample_curves(rows), budget_curve(rows)
    plot_test_time_compute(samples, budgets, out_dir / PLOTS / f"{name}.png", title)
    return [f"## Test-time compute: {title}", "",
            "Accuracy against the generated tokens per problem: k samples (pass@k, maj@k over the extracted "
            "answers, best-of-k by the reward) cost k times the mean length; one sample under a budget of B "
            "tokens counts only if it is right and finished within B tokens (length <= B), and costs the mean of "
            "min(length, B).", "", *markdown_tables(samples, budgets), "", image(name)]


def verdict(row: dict) -> str:
    """How an evaluation row scored: right (strict), right outside the format (lenient only), or wrong."""
    if row["strict"]:
        return "right"
    return "right, outside the format" if row["lenient"] else "wrong"


def code(text: str) -> str:
    """`text` as one Markdown code span: newlines written as \\n, double backticks so that one inside shows."""
    return "`` " + str(text).replace("\n", "\\n") + " ``"


def sample_lines(rows: list[dict]) -> list[str]:
    """Evaluation rows as Markdown list items with their verdict."""
    return [f"- {code(row['question'])} -> {code(row['completion'])} ({verdict(row)})" for row in rows]


def sample_total(row: dict) -> float:
    """A samples.jsonl row's summed reward-function scores (those that applied)."""
    return sum(value for value in row["rewards"].values() if value is not None)


def training_sample_line(row: dict) -> str:
    """A samples.jsonl row as a Markdown list item: prompt, completion, scores and (when logged) advantage."""
    advantage = f", advantage {row['advantage']:.3g}" if "advantage" in row else ""
    return f"- {code(row['prompt'])} -> {code(row['completion'])} (rewards {row['rewards']}{advantage})"


def training_sample_lines(samples: list[dict]) -> list[str]:
    """The best and worst of the last logged step's samples by their summed reward-function scores (a sample
    shown as one of the best is not shown again as one of the worst)."""
    last = [row for row in samples if row["step"] == samples[-1]["step"]]
    ranked = sorted(last, key=sample_total, reverse=True)
    best, worst = ranked[:SHOWN_SAMPLES], ranked[SHOWN_SAMPLES:][::-1][:SHOWN_SAMPLES]
    return [f"## Samples at step {samples[-1]['step']} (training)", "", "Best:", *map(training_sample_line, best),
            "", "Worst:", *map(training_sample_line, worst)]


def eval_sample_lines(title: str, rows: list[dict]) -> list[str]:
    """A few right and a few wrong evaluation rows."""
    right = [row for row in rows if row["lenient"]][:SHOWN_SAMPLES]
    wrong = [row for row in rows if not row["lenient"]][:SHOWN_SAMPLES]
    return [f"## Samples: {title}", "", "Right:", *sample_lines(right), "", "Wrong:", *sample_lines(wrong)]


def run_sections(runs: dict[str, Run], out_dir: Path, held_out: dict[str, list[dict]] | None = None) -> list[str]:
    """The report's body for `runs` (label -> Run; the first is the main run, the others add curves next to
    its own), its PNGs written under out_dir/plots. `held_out`: title -> per-sample evaluation rows made
    outside the run (the demo's) to show test-time compute and samples of."""
    (out_dir / PLOTS).mkdir(parents=True, exist_ok=True)
    main = next(iter(runs.values()))
    lines = curve_section({label: run.metrics for label, run in runs.items()}, out_dir)
    for name, rows in main.evaluations.items():
        lines += ["", *evaluation_section(name, rows, out_dir)]
    # title -> (plot name, per-sample rows): the run's newest evaluation of each set, then `held_out`.
    per_sample = {f"{name}, step {step}": (f"test_time_{name}", rows)
                  for name, (step, rows) in main.eval_samples.items()}
    for index, (title, rows) in enumerate((held_out or {}).items()):
        per_sample[title] = (f"test_time_{index}", rows)
    for title, (name, rows) in per_sample.items():
        lines += ["", *test_time_section(title, name, rows, out_dir)]
    if main.samples:
        lines += ["", *training_sample_lines(main.samples)]
    for title, (_, rows) in per_sample.items():
        lines += ["", *eval_sample_lines(title, rows)]
    return lines


def write_run_report(run_dir: str | Path) -> Path:
    """`rlreason report RUN_DIR`: RUN_DIR/report.md and RUN_DIR/plots/*.png; returns report.md's path."""
    run = read_run(run_dir)
    steps = len(run.metrics)
    lines = [f"# Run report: {run.path}", "",
             f"{steps} steps logged" + (f" (steps {run.metrics[0]['step']}-{run.metrics[-1]['step']})" if steps
                                        else "") + f"; {len(run.samples)} logged samples; evaluated sets: "
             f"{', '.join(run.evaluations) or 'none (train.eval_every)'}. {VERDICT_TEXT}", "",
             *run_sections({"run": run}, run.path)]
    path = run.path / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluation_keys(k: int) -> tuple[tuple[str, str], ...]:
    """(key of an evaluation summary, its name in the report), in the report's order."""
    return (("pass@1_lenient", "pass@1, lenient"), (f"pass@{k}_lenient", f"pass@{k}, lenient"),
            (f"maj@{k}_lenient", f"maj@{k}, lenient"), ("pass@1_strict", "pass@1, strict"),
            (f"pass@{k}_strict", f"pass@{k}, strict"), (f"maj@{k}_strict", f"maj@{k}, strict"),
            ("format", "R1 format compliance"), ("mean_length", "mean completion length (tokens)"))


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


def write_demo_report(out_dir: Path, evaluations: dict[str, dict], runs: dict[str, Path],
                      held_out: dict[str, list[dict]], header: str, control: str, seconds: dict[str, float]) -> dict:
    """The demo's summary.json and report.md (plots under out_dir/plots); returns the summary.

    `evaluations`: run ("base", "rl", optionally "control") -> `evaluate` summary; `runs`: curve label -> run
    directory, the GRPO run first; `held_out`: title -> the held-out evaluation's per-sample rows (test-time
    compute and samples); `control`: the control's `grpo.reward_control`; `seconds`: phase -> wall time.
    The comparison of base, GRPO and control leads; the GRPO run's own report follows (`run_sections`).
    """
    read = {label: read_run(path) for label, path in runs.items()}
    summary = summarize(evaluations, len(next(iter(read.values())).metrics), control, seconds)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    base, k = evaluations["base"], evaluations["base"]["samples_per_problem"]
    titles = {"base": "base model", "rl": "after GRPO", "control": f"control ({control} rewards)"}
    lines = [header, "", f"Held-out set: {base['num_problems']} problems, {k} samples each. {VERDICT_TEXT}", ""]
    gains = [f"GRPO moved lenient pass@1 by {summary['rl_gain_lenient_points']:+.1f} points "
             f"({base['pass@1_lenient']:.3f} -> {evaluations['rl']['pass@1_lenient']:.3f}), strict pass@1 by "
             f"{summary['rl_gain_strict_points']:+.1f} points."]
    if "control" in evaluations:
        gains.append(f"The same run with {control} rewards moved lenient pass@1 by "
                     f"{summary['control_gain_lenient_points']:+.1f} points and strict pass@1 by "
                     f"{summary['control_gain_strict_points']:+.1f}: the part of the gain that needs no "
                     f"information about the answers.")
    lines += [" ".join(gains), "", "| metric | " + " | ".join(titles[run] for run in evaluations) + " |",
              "| --- |" + " --- |" * len(evaluations)]
    for key, name in evaluation_keys(k):
        lines.append(f"| {name} | " + " | ".join(f"{evaluation[key]:.3f}" for evaluation in evaluations.values())
                     + " |")
    lines += ["", *run_sections(read, out_dir, held_out)]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary
