"""Reading JSONL, Parquet and folders of both into records that know their file and line."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_files import write_jsonl

from rlreason.config import ConfigError
from rlreason.data.bad_rows import BadRow
from rlreason.data.readers import Record, read_records


def test_jsonl_records_carry_their_line_and_blank_lines_still_count(tmp_path):
    file = tmp_path / "rows.jsonl"
    file.write_text('{"question": "a", "answer": "1"}\n\n   \n{"question": "b", "answer": 2}\n')
    assert read_records(file, "task.path") == [
        Record({"question": "a", "answer": "1"}, f"{file}:1"),
        Record({"question": "b", "answer": 2}, f"{file}:4"),
    ]


def test_lines_that_are_not_json_objects_are_bad_rows_with_file_and_line(tmp_path):
    file = tmp_path / "broken.jsonl"
    file.write_bytes(b'{"question": "ok"}\n{"question": "cut\n[1, 2]\n"text"\n{"q": "\xff\xfe"}\n')
    rows = read_records(file, "task.path")
    assert rows[0] == Record({"question": "ok"}, f"{file}:1")
    assert [(row.location, row.problem) for row in rows[1:]] == [
        (f"{file}:2", "is not valid JSON (Unterminated string starting at: column 14)"),
        (f"{file}:3", "holds a JSON list, not an object"),
        (f"{file}:4", "holds a JSON str, not an object"),
        (f"{file}:5", "is not valid UTF-8 (byte 8 of the line)"),
    ]
    assert all(isinstance(row, BadRow) for row in rows[1:])


def test_parquet_rows_are_numbered_from_one(tmp_path):
    file = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"question": ["a", "b", "c"], "answer": [1.0, 2.5, None]}), file)
    assert read_records(file, "task.path") == [
        Record({"question": "a", "answer": 1.0}, f"{file}:1"),
        Record({"question": "b", "answer": 2.5}, f"{file}:2"),
        Record({"question": "c", "answer": None}, f"{file}:3"),
    ]


def test_parquet_row_numbers_run_on_across_read_batches(tmp_path, monkeypatch):
    file = tmp_path / "long.parquet"
    pq.write_table(pa.table({"question": [str(i) for i in range(10)]}), file)
    monkeypatch.setattr("rlreason.data.readers.PARQUET_BATCH_ROWS", 3)
    rows = read_records(file, "task.path")
    assert [(row.fields["question"], row.location) for row in rows] == [(str(i), f"{file}:{i + 1}") for i in range(10)]


def test_folder_reads_jsonl_and_parquet_in_sorted_order_and_ignores_other_files(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"question": "from b"}])
    pq.write_table(pa.table({"question": ["from a1", "from a2"]}), tmp_path / "a.parquet")
    write_jsonl(tmp_path / "c.jsonl", [{"question": "from c"}])
    (tmp_path / "README.md").write_text("not data")
    rows = read_records(tmp_path, "task.path")
    assert [(row.fields["question"], row.location) for row in rows] == [
        ("from a1", f"{tmp_path / 'a.parquet'}:1"), ("from a2", f"{tmp_path / 'a.parquet'}:2"),
        ("from b", f"{tmp_path / 'b.jsonl'}:1"), ("from c", f"{tmp_path / 'c.jsonl'}:1")]


def test_paths_with_nothing_to_read_name_the_config_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'task.path': '.*missing.jsonl' does not exist"):
        read_records(tmp_path / "missing.jsonl", "task.path")
    (tmp_path / "rows.csv").write_text("question,answer\n")
    with pytest.raises(ConfigError, match=r"'task.eval_path': '.*rows.csv' is neither .jsonl nor .parquet"):
        read_records(tmp_path / "rows.csv", "task.eval_path")
    with pytest.raises(ConfigError, match=r"'task.path': folder .* holds no .jsonl or .parquet files"):
        read_records(tmp_path, "task.path")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ConfigError, match=r"'task.path': cannot read '.*bad.parquet'"):
        read_records(tmp_path / "bad.parquet", "task.path")
