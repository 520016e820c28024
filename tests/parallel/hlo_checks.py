"""Reading the all-gathers that tests/parallel/scripts/compiled_facts.py reports (a module of its own, not
conftest.py, for the reason tests/tiny_run.py gives)."""

from __future__ import annotations


def leading_dim(shape: str) -> int:
    """The first dimension of a result shape such as "f32[32,39,48]" (1 for a scalar)."""
    dims = shape[shape.index("[") + 1:-1]
    return int(dims.split(",")[0]) if dims else 1


def row_gathers(gathers: list[dict], row_counts: set[int]) -> list[str]:
    """The shapes of the all-gathers that move rows: along the first dimension of an array leading with a row
    count (row counts chosen so that no parameter dimension equals one)."""
    return [gather["shape"] for gather in gathers
            if gather["dimension"] == 0 and leading_dim(gather["shape"]) in row_counts]
