"""Helpers for the data tests: dataset files written on the fly, task configs, the shared data folder."""

from __future__ import annotations

import json
from pathlib import Path

from rlreason.config import TaskConfig, load_config

# The shared data sets sit beside the repository checkout (CI clones with ../shared next to it).
SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"


def write_jsonl(path: Path, rows: list) -> Path:
    """Writes one line per row: dicts and lists as JSON, strings as they are (to write malformed lines)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def task_config(*overrides: str) -> TaskConfig:
    """The default config's task section with dotted `task.*` overrides, validated as a config file is."""
    return load_config(overrides=list(overrides)).task
