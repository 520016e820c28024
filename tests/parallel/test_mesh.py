"""Mesh shapes from MeshConfig, and the device order across TPU slices (fake devices: no hardware needed)."""

from __future__ import annotations

import dataclasses

import pytest

from rlreason.config import ConfigError, MeshConfig
from rlreason.parallel.mesh import mesh_shape, multislice_grid


@pytest.mark.parametrize("cfg, devices, expected", [
    (MeshConfig(), 8, (8, 1, 1)),
    (MeshConfig(data=1, fsdp=-1, tensor=2), 8, (1, 4, 2)),
    (MeshConfig(data=2, fsdp=2, tensor=2), 8, (2, 2, 2)),
    (MeshConfig(data=-1, fsdp=1, tensor=4), 32, (8, 1, 4)),
])
def test_the_rest_axis_takes_the_remaining_devices(cfg, devices, expected):
    assert mesh_shape(cfg, devices) == expected


def test_fixed_axes_that_do_not_divide_the_devices_name_the_keys():
    with pytest.raises(ConfigError, match=r"mesh\.data=-1.*mesh\.fsdp=3.*do not divide the 8 devices"):
        mesh_shape(MeshConfig(data=-1, fsdp=3), 8)


def test_a_product_other_than_the_device_count_names_the_keys():
    with pytest.raises(ConfigError, match=r"mesh\.data=2, mesh\.fsdp=2, mesh\.tensor=1: their product is 4, but "
                                          r"the run has 8 devices"):
        mesh_shape(MeshConfig(data=2, fsdp=2, tensor=1), 8)


@dataclasses.dataclass(frozen=True)
class FakeTpu:
    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


def slices_along_axes(grid) -> list[int]:
    """For each mesh axis, how many slices one passes through walking along it from the grid's origin."""
    counts = []
    for axis in range(grid.ndim):
        line = grid[tuple(slice(None) if other == axis else 0 for other in range(grid.ndim))]
        counts.append(len({device.slice_index for device in line}))
    return counts


@pytest.mark.parametrize("shape, num_slices, across", [
    ((4, 2, 2), 2, [2, 1, 1]),  # slices stacked along data
    ((2, 4, 2), 4, [2, 2, 1]),  # data takes 2 of the 4 slices, fsdp the other 2
])
def test_slices_stack_along_data_then_fsdp_never_tensor(shape, num_slices, across):
    per_slice = 16 // num_slices
    devices = [FakeTpu(i, i // per_slice) for i in range(16)]
    grid = multislice_grid(shape, devices, num_slices)
    assert grid.shape == shape
    assert slices_along_axes(grid) == across
    # Each tensor group (fixed data and fsdp index) lies in one slice.
    for group in grid.reshape(shape[0] * shape[1], shape[2]):
        assert len({device.slice_index for device in group}) == 1


def test_tensor_parallelism_never_spans_slices():
    devices = [FakeTpu(i, i // 4) for i in range(8)]
    with pytest.raises(ConfigError, match="must divide mesh.data \\* mesh.fsdp"):
        multislice_grid((1, 1, 8), devices, 2)
