"""What the scripts of tests/parallel report about a compiled program (jax.stages.Compiled) for the tests to judge."""

from __future__ import annotations

import re


def compiled_facts(compiled) -> dict:
    """{"all_gathers": [{"shape": result shape such as "f32[32,39,48]", "dimension": the gathered one}, ...],
    "flops": per-device FLOPs (XLA's cost analysis)}."""
    gathers = [{"shape": shape, "dimension": int(dimension)} for shape, dimension in re.findall(
        r"= (\w+\[[\d,]*\])[^=\n]* all-gather(?:-start)?\([^\n]*?dimensions=\{(\d+)\}", compiled.as_text())]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"all_gathers": gathers, "flops": float(cost["flops"])}
