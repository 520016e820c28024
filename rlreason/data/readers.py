"""Dataset files read into records that remember where they came from (file and 1-based line).

Formats, by file suffix: `.jsonl`, one JSON object a line (blank lines are skipped but still counted, so
line numbers match an editor's); `.parquet`, one record a row (its "line" is the 1-based row number). A
folder is read as its `.jsonl` and `.parquet` files in sorted name order, formats mixed as they come; other
files in it (a README, say) are ignored. A line that is not a JSON object comes back as a `BadRow`; what a
record's fields must hold is for `sources` to check.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlreason.config import ConfigError
from rlreason.data.bad_rows import BadRow

# Parquet rows converted to Python objects at a time: bounds memory on wide files.
PARQUET_BATCH_ROWS = 4096


@dataclasses.dataclass(frozen=True)
class Record:
    """One row of a dataset file: its fields and "path:line"."""

    fields: dict
    location: str


def _read_jsonl(file: Path) -> list[Record | BadRow]:
    rows: list[Record | BadRow] = []
    with open(file, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            location = f"{file}:{line_number}"
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as error:
                rows.append(BadRow(location, f"is not valid UTF-8 (byte {error.start + 1} of the line)"))
                continue
            except json.JSONDecodeError as error:
                rows.append(BadRow(location, f"is not valid JSON ({error.msg}: column {error.colno})"))
                continue
            if isinstance(value, dict):
                rows.append(Record(value, location))
            else:
                rows.append(BadRow(location, f"holds a JSON {type(value).__name__}, not an object"))
    return rows


def _read_parquet(file: Path) -> list[Record | BadRow]:
    rows: list[Record | BadRow] = []
    for batch in pq.ParquetFile(file).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        rows += [Record(fields, f"{file}:{len(rows) + offset}") for offset, fields in enumerate(batch.to_pylist(), 1)]
    return rows


READERS = {".jsonl": _read_jsonl, ".parquet": _read_parquet}


def data_files(path: str | Path, config_key: str) -> list[Path]:
    """The files that `path` (a file, or a folder of them) names, in reading order. Raises ConfigError naming
    `config_key` when there is nothing to read."""
    path = Path(path)
    if path.is_dir():
        files = sorted(child for child in path.iterdir() if child.is_file() and child.suffix in READERS)
        if not files:
            raise ConfigError(f"config key '{config_key}': folder {str(path)!r} holds no "
                              f"{' or '.join(READERS)} files")
        return files
    if not path.is_file():
        raise ConfigError(f"config key '{config_key}': {str(path)!r} does not exist "
                          f"(relative paths start at the working directory {str(Path.cwd())!r})")
    if path.suffix not in READERS:
        raise ConfigError(f"config key '{config_key}': {str(path)!r} is neither {' nor '.join(READERS)}; "
                          f"name the file by its format")
    return [path]


def read_records(path: str | Path, config_key: str) -> list[Record | BadRow]:
    """Every record of the file or folder `path`, in order, with a BadRow for each line that is not a JSON
    object. A file that cannot be read at all raises ConfigError naming it and `config_key`."""
    rows: list[Record | BadRow] = []
    for file in data_files(path, config_key):
        try:
            rows += READERS[file.suffix](file)
        except (OSError, pa.ArrowException) as error:
            raise ConfigError(f"config key '{config_key}': cannot read {str(file)!r}: {error}") from None
    return rows
