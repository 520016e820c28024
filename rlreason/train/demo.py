"""`rlreason demo`: R1-Zero on a CPU in a few minutes, with a control run that shows what the true reward buys.

1. pretrain a tiny base model on a synthetic task until it usually writes the R1 format but often gets the answer
   wrong (with train.model_dir set, start from that model instead: a pretrained one such as SmolLM2);
2. evaluate it on held-out problems (the first of eval.sets); 3. run GRPO with rule-based rewards only; 4. run the same GRPO
   with a reward control (`grpo.reward_control`, default shuffle: the batch's rewards permuted, so they say nothing
   about the completions); 5. evaluate both; 6. write summary.json and report.md, plots under plots/: the
   comparison of the three, then the GRPO run's own report (rlreason.train.report, as `rlreason report`).
Accuracy is reported lenient (the answer right anywhere in the completion) first, then strict (format + answer).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from rlreason.config import Config, save_config
from rlreason.models.store import load_model, load_model_config, run_model_config
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules, param_shardings
from rlreason.train.evaluate import build_evaluator
from rlreason.train.loop import train
from rlreason.train.pretrain import pretrain
from rlreason.train.report import write_demo_report

DEFAULT_CONTROL = "shuffle"


def run_demo(cfg: Config, out_dir: str | Path, show_progress: bool = True, control: str = DEFAULT_CONTROL) -> dict:
    """Runs the demo into `out_dir`; `control` is the control run's `grpo.reward_control` ("none": no control
    run). Returns the summary written to summary.json, with the wall time of each phase (the report's own
    second or two excluded)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    seconds, start = {}, time.perf_counter()
    base_dir = cfg.train.model_dir or pretrain(cfg, out_dir / "base", show_progress)
    mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
    stored, _ = load_model_config(base_dir)
    params, model_cfg, tokenizer = load_model(
        base_dir, shardings=param_shardings(run_model_config(stored, cfg.model, base_dir), mesh, rules), run=cfg.model)
    evaluator = build_evaluator(cfg, model_cfg, tokenizer, mesh, rules)  # compiled once, for all three evaluations
    seconds["pretrain" if not cfg.train.model_dir else "load"] = time.perf_counter() - start

    def evaluated(label: str, run_params) -> tuple[dict, list[dict]]:
        begin = time.perf_counter()
        evaluation = evaluator.evaluate(run_params, evaluator.sets[0])
        result, rows = evaluation.summary, evaluation.rows
        seconds[f"eval_{label}"] = time.perf_counter() - begin
        if show_progress:
            print(f"{label}: pass@1 lenient {result['pass@1_lenient']:.3f}, strict {result['pass@1_strict']:.3f}, "
                  f"format {result['format']:.3f}")
        return result, rows

    def trained(label: str, reward_control: str) -> tuple[dict, list[dict]]:
        begin = time.perf_counter()
        run_cfg = dataclasses.replace(
            cfg, grpo=dataclasses.replace(cfg.grpo, reward_control=reward_control),
            train=dataclasses.replace(cfg.train, model_dir=str(base_dir), out_dir=str(out_dir / label)))
        state, trainer, _ = train(run_cfg, show_progress)
        seconds[f"grpo_{label}"] = time.perf_counter() - begin
        return evaluated(label, trainer.functions.policy(state))

    evaluations, runs = {}, {"GRPO": out_dir / "grpo"}
    evaluations["base"], base_rows = evaluated("base", params)
    evaluations["rl"], rl_rows = trained("grpo", cfg.grpo.reward_control)
    if control != "none":
        evaluations["control"], _ = trained("control", control)
        runs[f"{control} rewards"] = out_dir / "control"
    held_out = {"base model, held-out set": base_rows, "after GRPO, held-out set": rl_rows}
    header = (f"# rlreason demo: GRPO on `{cfg.task.name}` with rule-based rewards "
              f"({', '.join(f'{reward.name} x{reward.weight:g}' for reward in cfg.grpo.rewards)})")
    seconds["total"] = time.perf_counter() - start
    summary = write_demo_report(out_dir, evaluations, runs, held_out, header, control,
                                {phase: round(value, 1) for phase, value in seconds.items()})
    if show_progress:
        print("samples after GRPO (held-out):")
        for row in rl_rows[::max(1, cfg.eval.num_samples)][:3]:
            print(f"  {row['question']} ->{row['completion']}  ({'right' if row['lenient'] else 'wrong'})")
        print(f"report: {out_dir / 'report.md'}")
    return summary
