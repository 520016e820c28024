"""Cloud TPU slice types the launchers know: chips, TPU VMs (workers) and the names GCE and GKE use for them.

One JAX process runs on each worker (TPU VM). Sources: cloud.google.com/tpu/docs/v4, /v5e, /v5p (topologies),
and xpk's system characteristics (GKE accelerator labels and machine types).

v5e counts its physical hosts as 8 chips each (the docs list v5litepod-16 = 4x4 as "2 hosts"), but a
multi-host v5e slice is served as TPU VMs of 4 chips (ct5lp-hightpu-4t): v5litepod-16 has 4 workers. Only
v5litepod-8 (2x4, ct5lp-hightpu-8t) puts 8 chips on one VM. v4 and v5p names count TensorCores (2 per chip):
v4-32 is 16 chips = 4 workers of 4 chips; v5p-64 is 32 chips = 8 workers.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    accelerator_type: str  # gcloud --accelerator-type
    chips: int
    workers: int  # TPU VMs, one JAX process each
    runtime_version: str  # TPU VM software image (gcloud --version)
    gke_accelerator: str  # node label cloud.google.com/gke-tpu-accelerator
    topology: str  # node label cloud.google.com/gke-tpu-topology
    machine_type: str  # GKE node machine type

    @property
    def chips_per_worker(self) -> int:
        return self.chips // self.workers


_V4 = ("tpu-ubuntu2204-base", "tpu-v4-podslice", "ct4p-hightpu-4t")
_V5E = ("v2-alpha-tpuv5-lite", "tpu-v5-lite-podslice", "ct5lp-hightpu-4t")
_V5P = ("v2-alpha-tpuv5", "tpu-v5p-slice", "ct5p-hightpu-4t")

SLICES = {entry.accelerator_type: entry for entry in [
    TpuSlice("v4-8", 4, 1, _V4[0], _V4[1], "2x2x1", _V4[2]),
    TpuSlice("v4-16", 8, 2, _V4[0], _V4[1], "2x2x2", _V4[2]),
    TpuSlice("v4-32", 16, 4, _V4[0], _V4[1], "2x2x4", _V4[2]),
    TpuSlice("v4-64", 32, 8, _V4[0], _V4[1], "2x4x4", _V4[2]),
    TpuSlice("v5litepod-4", 4, 1, _V5E[0], _V5E[1], "2x2", _V5E[2]),
    TpuSlice("v5litepod-8", 8, 1, _V5E[0], _V5E[1], "2x4", "ct5lp-hightpu-8t"),
    TpuSlice("v5litepod-16", 16, 4, _V5E[0], _V5E[1], "4x4", _V5E[2]),
    TpuSlice("v5litepod-32", 32, 8, _V5E[0], _V5E[1], "4x8", _V5E[2]),
    TpuSlice("v5litepod-64", 64, 16, _V5E[0], _V5E[1], "8x8", _V5E[2]),
    TpuSlice("v5p-8", 4, 1, _V5P[0], _V5P[1], "2x2x1", _V5P[2]),
    TpuSlice("v5p-16", 8, 2, _V5P[0], _V5P[1], "2x2x2", _V5P[2]),
    TpuSlice("v5p-32", 16, 4, _V5P[0], _V5P[1], "2x2x4", _V5P[2]),
    TpuSlice("v5p-64", 32, 8, _V5P[0], _V5P[1], "2x4x4", _V5P[2]),
    TpuSlice("v5p-128", 64, 16, _V5P[0], _V5P[1], "4x4x4", _V5P[2]),
]}


def tpu_slice(accelerator_type: str) -> TpuSlice:
    if accelerator_type not in SLICES:
        raise SystemExit(f"unknown TPU type {accelerator_type!r}; known: {', '.join(SLICES)}")
    return SLICES[accelerator_type]
