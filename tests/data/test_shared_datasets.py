"""The real shared data sets (GSM8K, MATH-500, AIME 2024, AMC 2023) load through their sources."""

from __future__ import annotations

import json

import pytest
from dataset_files import SHARED_DATA, task_config

from rlreason.data.examples import task_rows
from rlreason.verifiers import get_reward_fn

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the shared data folder {SHARED_DATA} is missing "
                                "(CI clones the repository with ../shared beside it)")

GSM8K_ROWS = 300


def test_gsm8k_slice_golds_are_the_numbers_after_the_marker():
    train_file, test_file = SHARED_DATA / "gsm8k" / "train.jsonl", SHARED_DATA / "gsm8k" / "test.jsonl"
    task = task_config("task.name=gsm8k", f"task.path={train_file}", f"task.eval_path={test_file}")
    examples = task_rows(task, "train", GSM8K_ROWS)
    raw = [json.loads(line) for line in train_file.read_text().splitlines()[:GSM8K_ROWS]]
    assert [e.question for e in examples] == [row["question"] for row in raw]
    assert [e.answer for e in examples] == [row["answer"].split("####")[-1].strip().replace(",", "") for row in raw]
    assert examples[0].answer == "72" and examples[0].location == f"{train_file}:1"
    assert all(e.answer.lstrip("-").replace(".", "", 1).isdigit() for e in examples)
    gsm8k = get_reward_fn("gsm8k")
    assert all(gsm8k(e.question, f"<answer>{e.answer}</answer>", e.answer, e.metadata) == 1.0 for e in examples)
    held_out = task_rows(task, "eval", 5)
    assert held_out[0].answer == "18" and held_out[0].location == f"{test_file}:1"


@pytest.mark.parametrize("folder, rows", [("math500", 500), ("aime24", 30), ("amc23", 40)])
def test_competition_math_loads_every_row_with_a_text_gold(folder, rows):
    file = SHARED_DATA / folder / "test.jsonl"
    task = task_config("task.name=math", f"task.path={file}", "task.num_eval=0")
    examples = task_rows(task, "train", 1000)
    raw = [json.loads(line) for line in file.read_text().splitlines()]
    assert len(examples) == rows == len(raw)
    assert [e.question for e in examples] == [row["problem"] for row in raw]
    assert all(isinstance(e.answer, str) and e.answer for e in examples)
    if folder == "amc23":  # AMC ships its answers as floats
        assert [e.answer for e in examples[:4]] == ["27", "36", "45", "3159"]
