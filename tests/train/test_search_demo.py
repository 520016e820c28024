"""The search demo of docs/search.md at full size (slow: about 7 minutes on 2 cores): PRM beam search or MCTS
solves more held-out problems than maj@k of plain samples at no more tokens, and expert iteration on MCTS results
raises the policy's own held-out pass@1 by at least 10 points, more than training on the unverified control."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlreason.config import load_config
from rlreason.train.commands import run_eval
from rlreason.train.pretrain import pretrain
from rlreason.train.prm import prm
from rlreason.train.search import search
from rlreason.train.sft import sft

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu.yaml"


def lenient_pass_at_1(cfg, model: Path) -> float:
    return run_eval(cfg, str(model), show_progress=False)["heldout"].summary["pass@1_lenient"]


@pytest.mark.slow
def test_search_beats_voting_and_expert_iteration_teaches(tmp_path):
    cfg = load_config(CONFIG)
    base = pretrain(cfg, tmp_path / "base", show_progress=False)
    prm(cfg, str(base), str(tmp_path / "prm"), show_progress=False)
    summary = search(load_config(CONFIG, [f"eval.prm={tmp_path / 'prm'}", "search.train_problems=256"]), str(base),
                     str(tmp_path / "round0"), show_progress=False)
    margins = [point["lenient"] - point["maj_at_budget_lenient"] for point in summary["search"]
               if point["maj_at_budget_lenient"] is not None]
    assert max(margins) >= 0.05, summary["search"]

    trained = {}
    for name, rows in (("verified", "mcts_sft.jsonl"), ("control", "mcts_sft_control.jsonl")):
        sft(load_config(CONFIG, [f"train.model_dir={base}", f"sft.path={tmp_path / 'round0' / rows}",
                                 f"train.out_dir={tmp_path / name}"]), show_progress=False)
        trained[name] = lenient_pass_at_1(cfg, tmp_path / name / "model")
    start = summary["sampling"][0]["pass@k_lenient"]
    assert trained["verified"] >= start + 0.10, (start, trained)
    assert trained["verified"] > trained["control"], (start, trained)
