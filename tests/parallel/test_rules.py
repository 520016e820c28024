"""The logical-axis rule table and the PartitionSpecs it gives (no devices needed: an abstract mesh)."""

from __future__ import annotations

import typing

import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from rlreason.config import AxisRule, LogicalAxis, MeshConfig, load_config
from rlreason.parallel.rules import AXIS_RULES, axis_rules, partition_spec


def mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), ("data", "fsdp", "tensor"))


def test_table_covers_exactly_the_logical_axes_the_config_accepts():
    assert set(AXIS_RULES) == set(typing.get_args(LogicalAxis))


@pytest.mark.parametrize("axes, shape, expected", [
    (("layers", "embed", "heads", "head_dim"), (2, 64, 8, 16), P(None, "fsdp", "tensor", None)),
    (("vocab", "embed"), (256, 64), P("tensor", "fsdp")),
    (("layers", "mlp", "embed"), (2, 128, 64), P(None, "tensor", "fsdp")),
    (("layers", "norm"), (2, 64), P(None, None)),
    (("batch", "norm"), (8, 3), P(("data", "fsdp"), None)),
])
def test_dimensions_go_where_the_table_says(axes, shape, expected):
    assert partition_spec(axes, shape, mesh(2, 2, 4)) == expected


def test_a_dimension_the_mesh_axis_does_not_divide_is_replicated():
    # 2 KV heads on tensor=4: the K/V heads are replicated, the query heads still split.
    assert partition_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 2, 16), mesh(1, 2, 4)) == \
        P(None, "fsdp", None, None)
    assert partition_spec(("layers", "embed", "heads", "head_dim"), (2, 64, 8, 16), mesh(1, 2, 4)) == \
        P(None, "fsdp", "tensor", None)


def test_a_multi_axis_rule_keeps_the_axes_that_still_divide():
    # 4 rows over data=2 x fsdp=4: the rows split over data only.
    assert partition_spec(("batch", "norm"), (4, 3), mesh(2, 4, 1)) == P("data", None)
    assert partition_spec(("batch", "norm"), (3, 3), mesh(2, 4, 1)) == P(None, None)


def test_a_mesh_axis_is_used_once_per_array():
    rules = axis_rules(MeshConfig(rules=(AxisRule("embed", ("tensor",)),)))
    assert partition_spec(("vocab", "embed"), (256, 64), mesh(1, 1, 4), rules) == P("tensor", None)


def test_config_rules_override_single_entries():
    cfg = load_config(None, ["mesh.rules=[{logical: embed, mesh_axes: []}, {logical: kv_heads, mesh_axes: [fsdp]}]"])
    rules = axis_rules(cfg.mesh)
    assert rules["embed"] == () and rules["kv_heads"] == ("fsdp",)
    assert {key: value for key, value in rules.items() if key not in ("embed", "kv_heads")} == \
        {key: value for key, value in AXIS_RULES.items() if key not in ("embed", "kv_heads")}
    assert partition_spec(("vocab", "embed"), (256, 64), mesh(1, 2, 2), rules) == P("tensor", None)
