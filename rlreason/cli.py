"""`rlreason <command> CONFIG [key=value ...] [options]`: argument parsing only; each command calls one function.

CONFIG is a YAML file (see configs/); dotted `key=value` pairs override it, e.g. `grpo.beta=0.04`. Options
such as --out or --quiet may come before, between or after them. `rlreason convert SOURCE OUT` and
`rlreason report RUN_DIR` take arguments of their own and no config.

Bad input (a config key, a data file line, a model or checkpoint directory, the mesh, the tokenizer) ends the
command with one line `rlreason <command>: error: ...` naming what is wrong and the fix, and exit code 2;
a traceback means a bug.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import typing

from rlreason.config import GRPOConfig
from rlreason.huge_pages import rerun_with_huge_pages

REWARD_CONTROLS = typing.get_args(typing.get_type_hints(GRPOConfig)["reward_control"])

COMMANDS = {
    "demo": ("pretrain a tiny base model (or take train.model_dir), evaluate it, run GRPO and a random-reward control, "
             "evaluate both, write a report (--out DIR)"),
    "pretrain": "next-token training of a model from scratch on the task's worked solutions (--out DIR)",
    "train": "GRPO training from train.model_dir; writes metrics.jsonl, samples.jsonl, checkpoints/ and model/ to "
             "train.out_dir, resuming from its checkpoints if it has any",
    "sft": "supervised fine-tuning of train.model_dir on prompt / response rows (sft.path); writes to train.out_dir "
           "as train does, resuming from its checkpoints if it has any",
    "distill": "on-policy distillation of distill.teacher into train.model_dir: the student samples, the loss is "
               "the reverse KL to the teacher on its tokens; writes to train.out_dir as train does",
    "generate": "rejection sampling: generate.num_samples completions per prompt of the task from a model, the "
                "verified ones written as an SFT set (--out FILE.jsonl)",
    "star": "STaR / expert iteration from a base model (--model): star.rounds rounds of rejection sampling, "
            "rationalization with the answer as a hint, and SFT, each evaluated (--out DIR)",
    "prm": "train a process reward model on Math-Shepherd step labels of a model's own samples (--model), each step "
           "labelled by verified continuations of its prefix; writes OUT/model, OUT/prm_head.npz, labels and a "
           "held-out summary (--out DIR)",
    "search": "test-time search with the PRM of eval.prm: plain samples (pass@k, maj@k, best-of-k, PRM voting), "
              "step-level beam search and MCTS on eval.sets[0], accuracy against generated tokens; with "
              "search.train_problems, MCTS expert-iteration SFT rows (--model, --out DIR)",
    "pipeline": "run a pipeline file (configs/pipelines/): stages such as pretrain, sft, grpo, generate, star in "
                "order, each evaluated, resumable stage by stage, with a report of every stage's before and after",
    "eval": "pass@1 / pass@k / maj@k / format rate of a model directory or a train checkpoint on eval.sets (the "
            "task's held-out problems by default); --out DIR also writes DIR/eval/<set>.jsonl and the samples",
    "sample": "generate completions from a model directory for prompts given with --prompt",
    "bench": "time the GRPO step (sampling, scoring, update) and print the figures",
    "convert": "convert a Hugging Face directory or a GGUF file to an rlreason model directory, or back (--to hf)",
    "report": "write RUN_DIR/report.md with plots of a run's training curves, evaluations, test-time compute and "
              "samples",
}
WITHOUT_CONFIG = ("convert", "report")  # commands that take arguments of their own, no config
TRAINING_COMMANDS = ("train", "sft", "distill")  # runs in train.out_dir: checkpoints, resume, exit code 75 on a stop



def _user_errors() -> tuple[type[Exception], ...]:
    """The errors the project raises on purpose for bad input, each with a message that names the thing at
    fault and the fix. Imported when needed: most of them live in modules that import JAX."""
    from rlreason.config import ConfigError
    from rlreason.data.bad_rows import BadRowsError
    from rlreason.models.families import UnsupportedModelError
    from rlreason.models.hf_import import CheckpointError as ModelFileError
    from rlreason.models.store import ModelDirError
    from rlreason.tokenizers import TokenizerError
    from rlreason.train.checkpoint import CheckpointError
    from rlreason.train.report import RunReportError
    from rlreason.verifiers.bridge import VerifierPoolError

    return (ConfigError, BadRowsError, ModelDirError, ModelFileError, UnsupportedModelError, TokenizerError,
            CheckpointError, VerifierPoolError, RunReportError)


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each command's own."""
    parser = argparse.ArgumentParser(prog="rlreason", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, help_text in COMMANDS.items():
        command = parsers[name] = commands.add_parser(name, help=help_text, description=help_text)
        if name == "convert":
            command.add_argument("arguments", nargs="*", help="SOURCE OUT [--to rlreason|hf]; see rlreason convert -h")
            continue
        if name == "report":
            command.add_argument("run_dir", metavar="RUN_DIR",
                                 help="a run directory: the train.out_dir of rlreason train, or runs/demo/grpo")
            continue
        command.add_argument("settings", nargs="*", metavar="CONFIG [key=value ...]",
                             help="a YAML config file (configs/ holds examples), then dotted overrides such as "
                                  "grpo.beta=0.04")
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        if name in ("demo", "pretrain"):
            command.add_argument("--out", required=name == "pretrain", default="runs/demo",
                                 help="output folder (demo default: runs/demo)")
        if name == "demo":
            command.add_argument("--control", default="shuffle", choices=REWARD_CONTROLS,
                                 help="grpo.reward_control of the control run next to the real one (none: no control)")
        if name == "bench":
            command.add_argument("--memory", action="store_true",
                                 help="compile the step without running it and print its memory per device")
        if name == "sample":
            command.add_argument("--model", required=True, help="a model directory (from pretrain, train or convert)")
        if name == "generate":
            command.add_argument("--model", required=True,
                                 help="a model directory, or a checkpoint of rlreason train (as for eval)")
            command.add_argument("--out", required=True, help="the JSONL file of kept rows to write")
        if name == "prm":
            command.add_argument("--model", required=True,
                                 help="the policy: a model directory, or a checkpoint of rlreason train (as for eval)")
            command.add_argument("--out", required=True, help="the PRM's folder (model/, prm_head.npz, labels.jsonl, "
                                                              "summary.json)")
        if name == "search":
            command.add_argument("--model", required=True,
                                 help="the policy: a model directory, or a checkpoint of rlreason train (as for eval)")
            command.add_argument("--out", required=True, help="the folder of search.json, search.md, search.png, "
                                                              "per-method rows and mcts_sft.jsonl")
        if name == "star":
            command.add_argument("--model", required=True, help="the base model directory")
            command.add_argument("--out", required=True,
                                 help="the run's folder: rounds, their data and models, star.jsonl (resumed if there)")
        if name == "eval":
            command.add_argument("--model", required=True,
                                 help="a model directory (from pretrain, train or convert), or a checkpoint of "
                                      "rlreason train (<train.out_dir>/checkpoints/<step>)")
            command.add_argument("--out", default=None,
                                 help="write the summaries and per-sample rows under OUT/eval/ (see "
                                      "rlreason.train.evaluate)")
        if name == "sample":
            command.add_argument("--prompt", action="append", required=True,
                                 help="a question; repeat for several (rendered with tokenizer.template)")
        if name == "train":
            command.add_argument("--split-step", action="store_true",
                                 help="run sampling, scoring and the update as separately compiled functions")
    return parser, parsers


def _parse(argv: list[str]) -> tuple[argparse.Namespace, str, list[str]]:
    """(options, config path, overrides). The config and the overrides may be split by options: argparse gives
    the positionals after the first option to the command as unrecognized, so they are collected here."""
    parser, parsers = _parser()
    args, rest = parser.parse_known_args(argv)
    command = parsers[args.command]
    unknown = [item for item in rest if item.startswith("-")]
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    settings = args.settings + rest
    if not settings or "=" in settings[0]:
        command.error(f"the first argument must be a config file, then key=value overrides: rlreason {args.command} "
                      f"configs/demo_cpu.yaml [key=value ...] (configs/ holds examples; the built-in defaults "
                      f"suit no task)")
    return args, settings[0], settings[1:]


def _resume_command(arguments: list[str]) -> str:
    """The command line that resumes: this process's own when it ran as `python -m rlreason`, else `rlreason`
    with the same arguments."""
    if sys.argv[0].endswith("__main__.py") and sys.argv[1:] == arguments:
        return shlex.join(sys.orig_argv)
    return shlex.join(["rlreason", *arguments])


def _exit_now_if_distributed(code: int) -> int:
    """`code`, or in a multi-process run an immediate exit with it: a normal exit would wait at the distributed
    runtime's shutdown barrier for peers that may be blocked in a collective (see parallel.distributed)."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(args: argparse.Namespace, cfg, arguments: list[str]) -> int:
    from rlreason.parallel.distributed import set_local_device_count
    from rlreason.train.compile_cache import cache_counts, use_compilation_cache

    # Before any command touches JAX, which fixes the CPU device count when it first computes: a command may
    # compute before it builds its mesh (bench's random model). Joining other processes stays with the commands
    # that run on several (distributed.initialize).
    set_local_device_count(cfg.distributed)
    use_compilation_cache(cfg.train.compilation_cache_dir)
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
    elif args.command in TRAINING_COMMANDS:
        from rlreason.parallel.distributed import is_main_process
        from rlreason.storage import storage_path
        from rlreason.train.checkpoint import checkpoint_dir
        from rlreason.train.distill import distill
        from rlreason.train.loop import RunStopped, train
        from rlreason.train.sft import sft

        try:
            {"train": train, "sft": sft, "distill": distill}[args.command](cfg, show_progress)
        except RunStopped as stop:  # saved and stopped early (a stop signal, non-finite steps): its own exit code
            print(f"rlreason {args.command}: {stop}\nto resume: {_resume_command(arguments)}", file=sys.stderr)
            return stop.exit_code
        if is_main_process():
            out_dir = storage_path(cfg.train.out_dir)
            programs = cache_counts()
            print(f"{args.command}: {cfg.train.steps} steps done. model {out_dir / 'model'}; metrics "
                  f"{out_dir / 'metrics.jsonl'}; samples {out_dir / 'samples.jsonl'}; checkpoints {checkpoint_dir(cfg)}"
                  f"; XLA programs: {programs['compiled']} compiled, {programs['loaded']} loaded from the "
                  f"compilation cache")
    elif args.command == "eval":
        from rlreason.train.commands import run_eval

        run_eval(cfg, args.model, args.out, show_progress)
    elif args.command == "generate":
        from rlreason.parallel.distributed import is_main_process
        from rlreason.train.generate import generate

        summary = generate(cfg, args.model, args.out, show_progress)
        if is_main_process():
            print(f"generate: {summary['samples']} samples of {summary['prompts']} prompts, {summary['verified']} "
                  f"verified (pass@1 {summary['pass@1']:.3f}); kept {summary['kept']} rows for "
                  f"{summary['prompts_with_kept']} prompts in {args.out}")
    elif args.command == "star":
        from rlreason.parallel.distributed import is_main_process
        from rlreason.train.star import star

        rows = star(cfg, args.model, args.out, show_progress)
        if is_main_process():
            for row in rows:
                accuracy = ", ".join(f"{key.split('/')[1]} {row[key]:.3f}" for key in row
                                     if key.startswith("eval/") and key.endswith("/pass@1_lenient"))
                data = (f": kept {row['kept']}, rationalized {row['rationalized']} "
                        f"({row['rationalized_share']:.0%} of the SFT set)" if row["round"] else " (the base model)")
                print(f"star round {row['round']}{data}; held-out lenient pass@1 {accuracy}")
    elif args.command == "prm":
        from rlreason.train.prm import prm

        summary = prm(cfg, args.model, args.out, show_progress)
        before, after = summary["heldout_before"], summary["heldout_after"]
        print(f"prm: {summary['labelled_steps']} labelled steps of {summary['completions']} completions (mean soft "
              f"label {summary['mean_soft_label']:.3f}); held-out loss {before['loss']:.4f} -> {after['loss']:.4f}, "
              f"step accuracy {before['step_accuracy']:.3f} -> {after['step_accuracy']:.3f}; PRM in {args.out}")
    elif args.command == "search":
        from rlreason.train.search import search

        summary = search(cfg, args.model, args.out, show_progress)
        plain = summary["sampling"][-1]
        print(f"search on {summary['problems']} problems: {plain['k']} samples lenient pass@1 "
              f"{summary['sampling'][0]['pass@k_lenient']:.3f}, maj@{plain['k']} {plain['maj@k_lenient']:.3f} "
              f"({plain['tokens']:.0f} tokens / problem)")
        for point in summary["search"]:
            baseline = point["maj_at_budget_lenient"]
            versus = "beyond the samples" if baseline is None else \
                f"maj@{point['maj_k_at_budget_lenient']} {baseline:.3f} at that budget"
            print(f"  {point['method']} {point['setting']}: lenient {point['lenient']:.3f}, strict "
                  f"{point['strict']:.3f} ({point['tokens']:.0f} tokens / problem; {versus})")
        if "expert_iteration" in summary:
            rows = summary["expert_iteration"]
            print(f"  expert iteration: {rows['rows']} SFT rows for {rows['problems_with_rows']} of "
                  f"{rows['problems']} training problems in {args.out}/mcts_sft.jsonl")
        print(f"tables {args.out}/search.md, plot {args.out}/search.png")
    elif args.command == "sample":
        from rlreason.train.commands import run_sample

        run_sample(cfg, args.model, args.prompt)
    elif args.command == "bench" and args.memory:
        from rlreason.train.bench import run_memory

        run_memory(cfg)
    elif args.command == "bench":
        from rlreason.train.bench import run_bench

        if not cfg.train.model_dir:
            print("bench: train.model_dir is empty, so this times a randomly initialised model of the config's "
                  "model.* with a tokenizer trained on the task (set train.model_dir to time a trained model)")
        run_bench(cfg, show_progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command in `argv`, or, as the process's entry point (argv None), in sys.argv after re-running the
    process with huge pages for its large buffers (rlreason.huge_pages) where it lacks them."""
    if argv is None:
        rerun_with_huge_pages()
    arguments = sys.argv[1:] if argv is None else argv
    command = arguments[0] if arguments else "rlreason"
    try:
        if arguments[:1] == ["convert"]:  # takes no config: its own arguments
            from rlreason.models.convert import main as convert_main

            return convert_main(arguments[1:])
        if arguments[:1] == ["report"]:  # takes no config: a run directory
            from rlreason.train.report import write_run_report

            print(f"report: {write_run_report(_parser()[0].parse_args(arguments).run_dir)}")
            return 0
        args, config_path, overrides = _parse(arguments)
        if args.command == "pipeline":  # a pipeline file, not a run config: each stage loads its own
            from rlreason.train.pipeline import run_pipeline

            records, report = run_pipeline(config_path, overrides)
            print(f"pipeline: {len(records)} stages done; report {report}")
            return 0
        if getattr(args, "split_step", False):
            overrides = overrides + ["train.split_step=true"]
        from rlreason.config import load_config

        return _run(args, load_config(config_path, overrides), arguments)
    except KeyboardInterrupt:
        print(f"\nrlreason {command}: interrupted", file=sys.stderr)
        return _exit_now_if_distributed(130)
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        print(f"rlreason {command}: error: {error}", file=sys.stderr)
        return _exit_now_if_distributed(2)


if __name__ == "__main__":
    sys.exit(main())
