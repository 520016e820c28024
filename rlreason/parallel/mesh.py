"""The device mesh: axes ("data", "fsdp", "tensor") sized by `MeshConfig`, over the devices of the run.

Axes are `AxisType.Auto`: the model code carries no sharding annotations, so the shardings of the inputs
(from `rlreason.parallel.rules`) propagate through the program (GSPMD).

Device order: on one slice, `jax.make_mesh` lays the axes along the physical torus (on CPU and GPU it keeps
`jax.devices()` order, which is process-major). Across TPU slices (devices with several `slice_index` values)
the slow data-centre network joins the slices, so the slices are stacked along `data` first (only the gradient
all-reduce crosses slices) and then `fsdp`; `tensor`, which talks every layer, never spans slices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from rlreason.config import ConfigError, MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(cfg: MeshConfig, device_count: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes for `device_count` devices, with a -1 axis taking the devices left over."""
    sizes = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
    fixed = math.prod(size for size in sizes.values() if size != -1)
    described = ", ".join(f"mesh.{key}={size}" for key, size in sizes.items())
    if -1 in sizes.values():
        if device_count % fixed:
            rest = next(key for key, size in sizes.items() if size == -1)
            raise ConfigError(f"config keys {described}: the fixed axes ({fixed} devices) do not divide the "
                              f"{device_count} devices, so 'mesh.{rest}=-1' has no size")
        sizes = {key: device_count // fixed if size == -1 else size for key, size in sizes.items()}
    elif fixed != device_count:
        raise ConfigError(f"config keys {described}: their product is {fixed}, but the run has {device_count} "
                          f"devices; make the product {device_count} or set one axis to -1")
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def multislice_grid(shape: Sequence[int], devices: Sequence, num_slices: int) -> np.ndarray:
    """Devices of several TPU slices as an array of `shape`: slices stacked along data, then fsdp."""
    across = []
    remaining = num_slices
    for axis, size in zip(MESH_AXES, shape):
        share = math.gcd(size, remaining) if axis != "tensor" else 1
        across.append(share)
        remaining //= share
    if remaining != 1:
        raise ConfigError(f"config keys mesh.data={shape[0]}, mesh.fsdp={shape[1]}: the run spans {num_slices} "
                          f"TPU slices, whose count must divide mesh.data * mesh.fsdp (tensor parallelism stays "
                          f"within a slice)")
    within = [size // share for size, share in zip(shape, across)]
    return mesh_utils.create_hybrid_device_mesh(within, across, devices)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The run's mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    try:
        shape = mesh_shape(cfg, len(devices))
    except ConfigError as error:
        if devices[0].platform != "cpu":
            raise
        # A pod's config tried on a laptop (rlreason bench --memory, a dry run of the step): say how to get its mesh.
        raise ConfigError(f"{error} (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N simulated "
                          f"devices)") from None
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    num_slices = len({getattr(device, "slice_index", 0) for device in devices})
    if num_slices == 1:
        return jax.make_mesh(shape, MESH_AXES, axis_types, devices=devices)
    return Mesh(multislice_grid(shape, devices, num_slices), MESH_AXES, axis_types=axis_types)
