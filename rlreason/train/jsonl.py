"""JSON-lines logs of a run (metrics, samples, evaluations): rows carry a "step" and are only ever appended, so
that resuming from a checkpoint at step S cuts each log back to its rows of steps up to S."""

from __future__ import annotations

import json

from etils import epath


def rows_through(path: epath.Path, step: int) -> list[dict]:
    """The rows of a JSON-lines log whose "step" is at most `step`. A line that does not parse is dropped: rows
    are only ever appended, so it can only be the last one, cut short by a kill."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["step"] <= step:
            rows.append(row)
    return rows


def write_rows(path: epath.Path, rows: list[dict]) -> None:
    """Replaces `path` by `rows` in one rename, so that a kill leaves the old file or the new one."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scratch.replace(path)


def append_rows(path: epath.Path, rows: list[dict]) -> None:
    """Appends `rows` to `path` (created if missing)."""
    with path.open("a") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
