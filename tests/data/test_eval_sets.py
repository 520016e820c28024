"""eval.sets: each set's problems (the run's held-out split, a shared data file, a generator) and the rewards
that score it (the run's, with the set's own accuracy reward)."""

from __future__ import annotations

import json

import pytest
from dataset_files import SHARED_DATA

from rlreason.config import ConfigError, RewardConfig, load_config
from rlreason.data.encoding import load_prompts
from rlreason.data.eval_sets import load_eval_sets

RUN = ["sampling.max_prompt_length=1024", "task.num_eval=5", "task.max_gold_bytes=256",
       "grpo.rewards=[{name: r1_format, weight: 0.1}, {name: exact_answer, weight: 2.0}]",
       "grpo.accuracy_reward=exact_answer"]


def shared_file(folder: str):
    path = SHARED_DATA / folder / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"the shared data file {path} is missing")
    return path


def test_each_set_reads_its_source_and_is_scored_by_its_accuracy_reward(tokenizer):
    gsm8k, math500 = shared_file("gsm8k"), shared_file("math500")
    cfg = load_config(None, RUN + [
        f"eval.sets=[{{name: heldout}}, {{name: gsm8k_test, source: gsm8k, path: '{gsm8k}', num_problems: 3}}, "
        f"{{name: math500, source: math, path: '{math500}', num_problems: 4}}]"])
    heldout, gsm, math = load_eval_sets(cfg, tokenizer)
    own = load_prompts(cfg.task, "eval", 5, tokenizer, cfg.tokenizer.template, 1024)
    assert [e.question for e in heldout.prompts.examples] == [e.question for e in own.examples]
    assert heldout.rewards == cfg.grpo.rewards and heldout.accuracy_reward == "exact_answer"

    rows = [json.loads(line) for line in gsm8k.read_text().splitlines()[:3]]
    assert [e.question for e in gsm.prompts.examples] == [row["question"] for row in rows]
    assert [e.answer for e in gsm.prompts.examples] == [row["answer"].rsplit("####")[-1].strip().replace(",", "")
                                                        for row in rows]
    assert gsm.rewards == (RewardConfig("r1_format", 0.1), RewardConfig("gsm8k", 2.0))
    assert gsm.accuracy_reward == "gsm8k"

    rows = [json.loads(line) for line in math500.read_text().splitlines()[:4]]
    assert [(e.question, e.answer) for e in math.prompts.examples] == [(row["problem"], row["answer"]) for row in rows]
    assert math.rewards == (RewardConfig("r1_format", 0.1), RewardConfig("math_equiv", 2.0))


def test_a_generated_set_comes_from_the_held_out_stream(tokenizer):
    cfg = load_config(None, RUN + ["eval.sets=[{name: sums, source: addition, num_problems: 3}]"])
    [sums] = load_eval_sets(cfg, tokenizer)
    own = load_prompts(cfg.task, "eval", 3, tokenizer, cfg.tokenizer.template, 1024)
    assert [e.question for e in sums.prompts.examples] == [e.question for e in own.examples]


def test_a_missing_file_names_the_sets_key(tokenizer, tmp_path):
    cfg = load_config(None, RUN + [f"eval.sets=[{{name: x, source: gsm8k, path: '{tmp_path / 'absent.jsonl'}'}}]"])
    with pytest.raises(ConfigError, match=r"config key 'eval.sets\[0\].path'.*absent.jsonl"):
        load_eval_sets(cfg, tokenizer)
