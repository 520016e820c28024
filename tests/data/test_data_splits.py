"""Train and eval splits of file-backed tasks: a seeded held-out slice, or a separate eval file."""

from __future__ import annotations

import pytest
from dataset_files import task_config, write_jsonl

from rlreason.config import ConfigError
from rlreason.data.examples import task_rows


def _numbered_file(path, rows: int):
    return write_jsonl(path, [{"question": f"Question {i}?", "answer": str(i)} for i in range(rows)])


def test_held_out_rows_are_chosen_by_seed_and_never_trained_on(tmp_path):
    file = _numbered_file(tmp_path / "all.jsonl", 50)
    task = task_config("task.name=jsonl", f"task.path={file}", "task.num_eval=10", "task.seed=4")
    train = [int(e.answer) for e in task_rows(task, "train", 1000)]
    held_out = [int(e.answer) for e in task_rows(task, "eval", 1000)]
    assert len(held_out) == 10 and len(train) == 40
    assert sorted(train + held_out) == list(range(50))
    assert train == sorted(train) and held_out == sorted(held_out)  # file order within each split
    assert held_out != list(range(40, 50)) and held_out != list(range(10))  # a seeded choice, not an end slice
    other_seed = task_config("task.name=jsonl", f"task.path={file}", "task.num_eval=10", "task.seed=5")
    assert [int(e.answer) for e in task_rows(other_seed, "eval", 1000)] != held_out
    assert [int(e.answer) for e in task_rows(task, "eval", 1000)] == held_out


def test_count_takes_the_first_rows_of_a_split(tmp_path):
    file = _numbered_file(tmp_path / "all.jsonl", 30)
    task = task_config("task.name=jsonl", f"task.path={file}", "task.num_eval=0")
    assert [e.answer for e in task_rows(task, "train", 5)] == ["0", "1", "2", "3", "4"]


def test_eval_path_gives_the_eval_split_and_training_keeps_every_row(tmp_path):
    train_file = _numbered_file(tmp_path / "train.jsonl", 20)
    eval_file = write_jsonl(tmp_path / "test.jsonl", [{"question": "Held out?", "answer": "7"}])
    task = task_config("task.name=jsonl", f"task.path={train_file}", f"task.eval_path={eval_file}", "task.num_eval=5")
    assert len(task_rows(task, "train", 1000)) == 20
    assert [(e.question, e.location) for e in task_rows(task, "eval", 1000)] == [("Held out?", f"{eval_file}:1")]


def test_holding_out_every_row_is_refused(tmp_path):
    file = _numbered_file(tmp_path / "all.jsonl", 8)
    task = task_config("task.name=jsonl", f"task.path={file}", "task.num_eval=8")
    with pytest.raises(ConfigError, match=r"'task.num_eval' holds out 8 rows, but task.path has only 8"):
        task_rows(task, "train", 100)
