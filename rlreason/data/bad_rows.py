"""Malformed dataset rows: where each one is, what is wrong with it, and the `task.on_bad_row` policy.

Every check along the way from a file to the step's arrays (JSON, fields and their types, the gold's size, the
prompt's length) reports a problem as a `BadRow` at the row's location instead of raising at once, so that
one load reports every malformed row. `enforce_policy` then stops with all of them listed
(`task.on_bad_row=stop`) or lets the loader drop them and count them (`skip`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable, TypeVar

logger = logging.getLogger("rlreason.data")

Item = TypeVar("Item")
Result = TypeVar("Result")

# Rows listed in full in a stop error or a skip warning; the rest are counted.
LISTED_ROWS = 20


@dataclasses.dataclass(frozen=True)
class BadRow:
    """A malformed row. `location` is "path:line" (line 1-based; for Parquet the 1-based row) for files, or
    the generator, seed and item number for generated problems."""

    location: str
    problem: str

    def __str__(self) -> str:
        return f"{self.location}: {self.problem}"


class MalformedRow(ValueError):
    """Raised by a per-row check with what is wrong; `check_rows` adds the row's location."""


class BadRowsError(ValueError):
    """Malformed rows under task.on_bad_row=stop; the message lists them with their file and line."""


def check_rows(items: Iterable[Item | BadRow], check: Callable[[Item], Result]) -> list[Result | BadRow]:
    """`check(item)` for each item (anything with a `location`), in order. An item whose check raises
    MalformedRow becomes a BadRow at its location; BadRows among the items pass through unchanged."""
    results: list[Result | BadRow] = []
    for item in items:
        if isinstance(item, BadRow):
            results.append(item)
            continue
        try:
            results.append(check(item))
        except MalformedRow as error:
            results.append(BadRow(item.location, str(error)))
    return results


def partition(results: Iterable[Result | BadRow]) -> tuple[list[Result], list[BadRow]]:
    """(the good results, the bad rows), each in their original order."""
    good, bad = [], []
    for result in results:
        (bad if isinstance(result, BadRow) else good).append(result)
    return good, bad


def _listing(bad_rows: list[BadRow]) -> str:
    lines = [f"  {row}" for row in bad_rows[:LISTED_ROWS]]
    if len(bad_rows) > LISTED_ROWS:
        lines.append(f"  ... and {len(bad_rows) - LISTED_ROWS} more")
    return "\n".join(lines)


def enforce_policy(bad_rows: list[BadRow], on_bad_row: str, dataset: str) -> None:
    """Raises BadRowsError listing `bad_rows` when `on_bad_row` is "stop"; with "skip", logs a warning that the
    caller drops them. `dataset` names what was loaded, for the messages."""
    if not bad_rows:
        return
    if on_bad_row == "stop":
        raise BadRowsError(f"{len(bad_rows)} malformed row(s) in {dataset} (fix them, or set "
                           f"task.on_bad_row=skip to train without them):\n{_listing(bad_rows)}")
    logger.warning("skipping %d malformed row(s) in %s (task.on_bad_row=skip):\n%s", len(bad_rows), dataset,
                   _listing(bad_rows))
