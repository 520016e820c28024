import itertools

import numpy as np
import pytest

from rlreason.train.evaluate import majority_correct, pass_at_k


@pytest.mark.parametrize("n,c,k", [(8, 0, 1), (8, 3, 1), (8, 3, 4), (8, 8, 8), (5, 2, 3), (6, 1, 6)])
def test_pass_at_k_equals_the_fraction_of_k_subsets_with_a_correct_sample(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_majority_vote():
    assert majority_correct(["4", "5", "4", None], [True, False, True, False])
    assert not majority_correct(["5", "5", "4"], [False, False, True])
    assert not majority_correct([None, None], [False, False])


def test_evaluation_reports_each_view_from_the_completions_text(tiny_base_model):
    from tiny_run import tiny_config
    from rlreason.data.encoding import load_prompts
    from rlreason.models.store import load_model
    from rlreason.train.evaluate import evaluate
    from rlreason.verifiers.answers import canonical_answer, last_number
    from rlreason.verifiers.format import extract_answer, is_r1_formatted

    cfg = tiny_config()
    params, model_cfg, tokenizer = load_model(tiny_base_model)
    prompts = load_prompts(cfg.task, "eval", cfg.task.num_eval, tokenizer, cfg.tokenizer.template,
                           cfg.sampling.max_prompt_length)
    summary, rows = evaluate(params, model_cfg, tokenizer, prompts, cfg)
    for row in rows:  # recomputed from the text: answer tag, R1 format, last number
        tagged = extract_answer(row["completion"])
        in_tag = tagged is not None and canonical_answer(tagged) == row["gold"]
        assert row["correct"] == in_tag
        assert row["format"] == is_r1_formatted(row["completion"])
        assert row["strict"] == (in_tag and row["format"])
        assert row["lenient"] == (in_tag or last_number(row["completion"]) == int(row["gold"]))
    for view, key in (("strict", "pass@1_strict"), ("lenient", "pass@1_lenient"), ("correct", "pass@1")):
        assert summary[key] == pytest.approx(np.mean([row[view] for row in rows])), key
    assert summary["pass@1_lenient"] > summary["pass@1_strict"], "the tiny base model answers outside the format too"
    k = cfg.eval.num_samples
    problems = [rows[i:i + k] for i in range(0, len(rows), k)]
    assert summary[f"pass@{k}_lenient"] == pytest.approx(np.mean([any(r["lenient"] for r in p) for p in problems]))
