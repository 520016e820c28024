"""Malformed rows are reported with file and line and what is wrong; task.on_bad_row stops or skips and counts."""

from __future__ import annotations

import logging

import pytest
from dataset_files import task_config, write_jsonl

from rlreason.data.bad_rows import BadRowsError
from rlreason.data.encoding import load_prompts

MAX_PROMPT_LENGTH = 48


def _malformed_file(tmp_path, tokenizer):
    """A JSONL file with one row of every kind of problem between two good rows; the expected messages."""
    long_question = "What is " + "+".join(["1"] * 80) + "?"
    file = write_jsonl(tmp_path / "train.jsonl", [
        {"question": "What is 1+2?", "answer": "3"},
        '{"question": "What is 2+2?", "answer": ',
        {"prompt": "What is 3+3?", "answer": "6"},
        {"question": 12, "answer": "12"},
        {"question": "   ", "answer": "1"},
        {"question": "What is 5+5?", "answer": "1" * 600},
        {"question": long_question, "answer": "80"},
        {"question": "What is 7+7?", "answer": [14]},
        {"question": "What is 8+8?", "answer": "16"},
    ])
    expected = [
        f"{file}:2: is not valid JSON (Expecting value: column 40)",
        f"{file}:3: has no field 'question' (task.prompt_field); its fields: prompt, answer",
        f"{file}:4: field 'question' (task.prompt_field) must be a string, got int",
        f"{file}:5: field 'question' (task.prompt_field) is empty",
        f"{file}:6: gold answer and metadata, as JSON, are longer than task.max_gold_bytes=512 (raise it)",
        f"{file}:7: prompt is {len(tokenizer.encode(long_question))} tokens with template 'plain', more than "
        f"sampling.max_prompt_length=48",
        f"{file}:8: field 'answer' (task.answer_field) must be a non-empty string or a number, got list",
    ]
    return file, expected


def _load(file, tokenizer, policy: str):
    task = task_config("task.name=jsonl", f"task.path={file}", "task.num_eval=0", f"task.on_bad_row={policy}")
    return load_prompts(task, "train", task.num_train, tokenizer, "plain", MAX_PROMPT_LENGTH)


def test_stop_lists_every_malformed_row_with_file_and_line(tmp_path, tokenizer):
    file, expected = _malformed_file(tmp_path, tokenizer)
    with pytest.raises(BadRowsError) as caught:
        _load(file, tokenizer, "stop")
    message = str(caught.value)
    assert message.startswith("7 malformed row(s) in the train split of task 'jsonl' (fix them, or set "
                              "task.on_bad_row=skip to train without them):")
    lines = message.splitlines()[1:]
    assert len(lines) == len(expected)
    for line, start in zip(lines, expected):
        assert line.strip().startswith(start), (line, start)


def test_skip_drops_and_counts_them_and_logs_where_they_are(tmp_path, tokenizer, caplog):
    file, expected = _malformed_file(tmp_path, tokenizer)
    with caplog.at_level(logging.WARNING, logger="rlreason.data"):
        prompts = _load(file, tokenizer, "skip")
    assert prompts.skipped_rows == 7
    assert [(e.question, e.answer, e.location) for e in prompts.examples] == [
        ("What is 1+2?", "3", f"{file}:1"), ("What is 8+8?", "16", f"{file}:9")]
    assert prompts.prompt_tokens.shape == (2, MAX_PROMPT_LENGTH)
    [record] = caplog.records
    assert "skipping 7 malformed row(s) in the train split of task 'jsonl' (task.on_bad_row=skip)" in record.message
    assert all(start in record.message for start in expected)


def test_a_long_list_of_bad_rows_is_cut_short(tmp_path, tokenizer):
    file = write_jsonl(tmp_path / "train.jsonl", [{"question": "ok?", "answer": "1"}] + ["not json"] * 30)
    with pytest.raises(BadRowsError, match=r"30 malformed row\(s\)(.|\n)*train.jsonl:21: (.|\n)*\.\.\. and 10 more$"):
        _load(file, tokenizer, "stop")


def test_nothing_usable_is_an_error_even_when_skipping(tmp_path, tokenizer):
    file = write_jsonl(tmp_path / "train.jsonl", ["not json", {"question": ""}])
    with pytest.raises(ValueError, match=r"task 'jsonl' has no usable rows \(2 malformed ones skipped\)"):
        _load(file, tokenizer, "skip")


def test_generated_rows_are_located_by_generator_seed_and_number(tokenizer):
    task = task_config("task.name=addition", "task.min_digits=3", "task.max_digits=3", "task.seed=5")
    with pytest.raises(BadRowsError, match=r"addition seed 5 problem 1: prompt is \d+ tokens with template 'r1_zero'"):
        load_prompts(task, "train", 3, tokenizer, "r1_zero", MAX_PROMPT_LENGTH)
