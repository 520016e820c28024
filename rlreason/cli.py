"""`rlreason <command> [CONFIG] [key=value ...]`: argument parsing only; each command calls one function.

CONFIG is a YAML file (see configs/); dotted `key=value` pairs override it, e.g. `grpo.beta=0.04`.
"""

from __future__ import annotations

import argparse
import sys
import typing

from rlreason.config import ConfigError, GRPOConfig, load_config

REWARD_CONTROLS = typing.get_args(typing.get_type_hints(GRPOConfig)["reward_control"])

COMMANDS = {
    "demo": "pretrain a tiny base model, evaluate it, run GRPO, evaluate again, write a report (--out DIR)",
    "pretrain": "next-token training of a model from scratch on the task's worked solutions (--out DIR)",
    "train": "GRPO training from train.model_dir; writes metrics.jsonl, samples.jsonl, checkpoints/ and model/ to "
             "train.out_dir, resuming from its checkpoints if it has any",
    "eval": "pass@1 / pass@k / maj@k / format rate of a model directory on the task's held-out problems",
    "sample": "generate completions from a model directory for prompts given with --prompt",
    "bench": "time the GRPO step (sampling, scoring, update) and print the figures",
    "convert": "convert a Hugging Face directory or a GGUF file to an rlreason model directory, or back (--to hf)",
}


def _split_config_and_overrides(values: list[str]) -> tuple[str | None, list[str]]:
    if values and "=" not in values[0]:
        return values[0], values[1:]
    return None, values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlreason", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        if name == "convert":
            command.add_argument("arguments", nargs="*", help="SOURCE OUT [--to rlreason|hf]; see rlreason convert -h")
            continue
        command.add_argument("settings", nargs="*", metavar="[CONFIG] [key=value ...]",
                             help="a YAML config file, then dotted overrides such as grpo.beta=0.04")
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        if name in ("demo", "pretrain"):
            command.add_argument("--out", required=name == "pretrain", default="runs/demo",
                                 help="output folder (demo default: runs/demo)")
        if name == "demo":
            command.add_argument("--control", default="shuffle", choices=REWARD_CONTROLS,
                                 help="grpo.reward_control of the control run next to the real one (none: no control)")
        if name in ("eval", "sample"):
            command.add_argument("--model", required=True, help="a model directory (from pretrain, train or convert)")
        if name == "sample":
            command.add_argument("--prompt", action="append", required=True,
                                 help="a question; repeat for several (rendered with tokenizer.template)")
        if name == "train":
            command.add_argument("--split-step", action="store_true",
                                 help="run sampling, scoring and the update as separately compiled functions")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:  # takes no config: its own arguments
        from rlreason.models.convert import main as convert_main

        return convert_main(argv[1:])
    args = _parser().parse_args(argv)
    config_path, overrides = _split_config_and_overrides(args.settings)
    if getattr(args, "split_step", False):
        overrides = overrides + ["train.split_step=true"]
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as error:
        print(f"rlreason {args.command}: {error}", file=sys.stderr)
        return 2
    show_progress = not args.quiet
    if args.command == "demo":
        from rlreason.train.demo import run_demo

        summary = run_demo(cfg, args.out, show_progress, args.control)
        control = f", {args.control} control {summary['control_pass@1_lenient']:.3f}" if args.control != "none" else ""
        print(f"lenient pass@1: base {summary['base_pass@1_lenient']:.3f} -> after GRPO "
              f"{summary['rl_pass@1_lenient']:.3f}{control}; strict {summary['base_pass@1_strict']:.3f} -> "
              f"{summary['rl_pass@1_strict']:.3f}; format {summary['base_format']:.3f} -> {summary['rl_format']:.3f}")
    elif args.command == "pretrain":
        from rlreason.train.pretrain import pretrain

        pretrain(cfg, args.out, show_progress)
    elif args.command == "train":
        from rlreason.train.loop import RunStopped, train

        try:
            train(cfg, show_progress)
        except RunStopped as stop:  # saved and stopped early (SIGTERM, non-finite steps): its own exit code
            print(f"rlreason train: {stop}", file=sys.stderr)
            return stop.exit_code
    elif args.command == "eval":
        from rlreason.train.commands import run_eval

        run_eval(cfg, args.model)
    elif args.command == "sample":
        from rlreason.train.commands import run_sample

        run_sample(cfg, args.model, args.prompt)
    elif args.command == "bench":
        from rlreason.train.bench import run_bench

        run_bench(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
