"""How the GRPO step scales: `rlreason bench` of one base config with one knob changed at a time.

    python launch/scaling.py --plan                # the points it would time, and their overrides
    python launch/scaling.py --out runs/scaling    # the table of docs/benchmarks.md: 30 min on 2 slow CPU cores

The knobs (AXES) are the model's width (hidden size, with the heads, KV heads and MLP width scaled alike at the
base's head size), its depth, the group size G and the completion length. Each point runs `rlreason bench` in a
fresh process (so each point's peak memory is its own), one after another; a point whose config equals one
already timed (the base shape, on every knob) reuses its figures. Writes OUT.json (every point's bench
figures), OUT.md (the table) and OUT.png (seconds per step, its sampling and update parts, and MFU against each
knob), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compare_peers import run_rlreason  # noqa: E402  (launch/ is the script's own folder)
from rlreason.config import ConfigError, ModelConfig, load_config  # noqa: E402
from rlreason.train.flops import matmul_weights  # noqa: E402


def width_overrides(base: ModelConfig, hidden: int) -> list[str]:
    """The model `hidden` wide, shaped as the base: the same head size, heads and MLP in proportion."""
    heads = max(1, hidden // base.head_dim)
    return [f"model.hidden_size={hidden}", f"model.num_heads={heads}",
            f"model.num_kv_heads={max(1, heads * base.num_kv_heads // base.num_heads)}",
            f"model.intermediate_size={round(base.intermediate_size * hidden / base.hidden_size)}"]


# Knob -> (its config key in the table, the overrides that set it to a value given the base model).
AXES = {
    "hidden": ("model.hidden_size", width_overrides),
    "layers": ("model.num_layers", lambda base, value: [f"model.num_layers={value}"]),
    "generations": ("grpo.num_generations", lambda base, value: [f"grpo.num_generations={value}"]),
    "completion": ("sampling.max_completion_length",
                   lambda base, value: [f"sampling.max_completion_length={value}"]),
}
DEFAULT_VALUES = {"hidden": "256,512,1024", "layers": "4,8,12", "generations": "4,8,16,32",
                  "completion": "64,128,256,512"}


def knob_value(knob: str, text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"--{knob}: {text!r} is not a whole number (give comma-separated values such as 4,8,12)")
    return int(text)


def table(points: list[dict]) -> str:
    header = ("| knob | value | matmul weights | rollouts | s/step | sampling s | update s | completion tok/s "
              "| GFLOP/step | GFLOP/s | MFU | peak RSS | first step | load |")
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for point in points:
        figures = point["bench"]
        lines.append(
            f"| {point['knob']} | {point['value']} | {point['matmul_weights'] / 1e6:.1f}M | "
            f"{figures['rollouts_per_step']} | {figures['median_step_s']:.2f} | {figures['median_rollout_s']:.2f} | "
            f"{figures['median_update_s']:.2f} | {figures['completion_tokens_per_s']:,.0f} | "
            f"{figures['step_gflop']:,.0f} | {figures['achieved_gflops']:.0f} | {figures['mfu']:.2f} | "
            f"{figures['peak_memory_bytes'] / 2**30:.1f} GiB | {figures['first_step_s']:.1f} s | "
            f"{figures['loadavg_1m']:.1f} |")
    return "\n".join(lines)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    knobs = list(dict.fromkeys(point["knob"] for point in points))
    figure, axes = plt.subplots(1, len(knobs), figsize=(4 * len(knobs), 3.6), squeeze=False)
    for axis, knob in zip(axes[0], knobs):
        mine = [point for point in points if point["knob"] == knob]
        values = [point["value"] for point in mine]
        for key, label in (("median_step_s", "step"), ("median_rollout_s", "sampling"),
                           ("median_update_s", "update")):
            axis.plot(values, [point["bench"][key] for point in mine], marker="o", label=label)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(values, [str(value) for value in values])
        axis.set_xlabel(AXES[knob][0])
        axis.set_ylabel("seconds")
        mfu = axis.twinx()
        mfu.plot(values, [point["bench"]["mfu"] for point in mine], color="grey", linestyle="--", marker="x",
                 label="MFU")
        mfu.set_ylim(0, 1)
        mfu.set_ylabel("MFU (dashed)")
    axes[0][0].legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/bench_peers.yaml", help="the base config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the base, for every point")
    parser.add_argument("--out", default="scaling", help="writes OUT.json, OUT.md and OUT.png")
    parser.add_argument("--plan", action="store_true", help="print the points and their overrides; bench none")
    for knob, values in DEFAULT_VALUES.items():
        parser.add_argument(f"--{knob}", default=values, help=f"comma-separated values (default {values}; "
                            "empty: leave the knob out)")
    args = parser.parse_args(argv)
    try:  # every point's config is checked before the first bench runs
        base_cfg = load_config(args.config, args.overrides)
        sweep = [(knob, knob_value(knob, value)) for knob in AXES for value in getattr(args, knob).split(",") if value]
        planned = [(knob, value, AXES[knob][1](base_cfg.model, value)) for knob, value in sweep]
        point_cfgs = [load_config(args.config, [*args.overrides, *knob_overrides]) for _, _, knob_overrides in planned]
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.plan:
        for index, ((knob, value, knob_overrides), point_cfg) in enumerate(zip(planned, point_cfgs)):
            repeat = "  (a config already listed: timed once)" if point_cfg in point_cfgs[:index] else ""
            print(f"{knob}={value}: {matmul_weights(point_cfg.model):,} matmul weights  "
                  f"{' '.join(knob_overrides)}{repeat}")
        return 0
    points, benched = [], []  # benched: (config, figures), so the base shape on every axis is timed once
    for (knob, value, knob_overrides), point_cfg in zip(planned, point_cfgs):
        figures = next((figures for cfg, figures in benched if cfg == point_cfg), None)
        if figures is None:
            figures = run_rlreason(args.config, [*args.overrides, *knob_overrides])
            benched.append((point_cfg, figures))
        points.append({"knob": knob, "value": value, "overrides": knob_overrides,
                       "matmul_weights": matmul_weights(point_cfg.model), "bench": figures})
        print(f"{knob}={value}: {figures['median_step_s']:.2f} s/step, MFU {figures['mfu']:.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": args.config, "overrides": args.overrides, "points": points}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    machine = (f"{points[0]['bench']['cpu'] if points else 'no point run'}, {os.cpu_count()} cores, "
               f"{time.strftime('%Y-%m-%d')}, base {args.config} {' '.join(args.overrides)}".rstrip())
    out.with_suffix(".md").write_text(f"{machine}\n\n{table(points)}\n")
    plot(points, out.with_suffix(".png"))
    print(machine, table(points), sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
