"""`rlreason demo`: R1-Zero on a CPU in a few minutes.

1. pretrain a tiny base model on a synthetic task until it sometimes, not usually, answers right in the R1
   format; 2. evaluate it on held-out problems; 3. run GRPO with rule-based rewards only; 4. evaluate again;
5. write summary.json, report.md and plots under the output folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rlreason.config import Config, save_config
from rlreason.data.encoding import load_prompts
from rlreason.models.store import load_model
from rlreason.train.evaluate import evaluate
from rlreason.train.loop import train
from rlreason.train.pretrain import pretrain
from rlreason.train.report import write_report

SHOWN_SAMPLES = 6


def run_demo(cfg: Config, out_dir: str | Path, show_progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    base_dir = pretrain(cfg, out_dir / "base", show_progress)
    params, model_cfg, tokenizer = load_model(base_dir, run=cfg.model)
    held_out = load_prompts(cfg.task, "eval", cfg.task.num_eval, tokenizer, cfg.tokenizer.template,
                            cfg.sampling.max_prompt_length)

    base, base_rows = evaluate(params, model_cfg, tokenizer, held_out, cfg, seed=cfg.train.seed)
    if show_progress:
        print(f"base model: pass@1 {base['pass@1']:.3f}, format {base['format']:.3f}")
    rl_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, model_dir=str(base_dir),
                                                                out_dir=str(out_dir / "grpo")))
    state, trainer, history = train(rl_cfg, show_progress)
    trained, trained_rows = evaluate(state.params, model_cfg, tokenizer, held_out, cfg, seed=cfg.train.seed)
    if show_progress:
        print(f"after GRPO: pass@1 {trained['pass@1']:.3f}, format {trained['format']:.3f}")
    step = max(1, cfg.eval.num_samples)
    samples = {"base model": base_rows[::step][:SHOWN_SAMPLES], "after GRPO": trained_rows[::step][:SHOWN_SAMPLES]}
    header = (f"# rlreason demo: GRPO on `{cfg.task.name}` with rule-based rewards "
              f"({', '.join(reward.name for reward in cfg.grpo.rewards)})")
    summary = write_report(out_dir, base, trained, history, samples, header)
    if show_progress:
        print("samples after GRPO (held-out):")
        for row in samples["after GRPO"][:3]:
            print(f"  {row['question']} ->{row['completion']}  ({'right' if row['correct'] else 'wrong'})")
        print(f"report: {out_dir / 'report.md'}")
    return summary
