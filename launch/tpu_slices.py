"""Cloud TPU slice types the launchers know: chips, memory, TPU VMs (workers) and the names GCE and GKE use.

One JAX process runs on each worker (TPU VM) and sees one device per chip. Sources: cloud.google.com/tpu/docs
/v4, /v5e, /v5p, /v6e (topologies, HBM per chip) and xpk's system characteristics (GKE accelerator labels).

The number in a type's name counts TensorCores for v4 and v5p (2 per chip: v4-32 is 16 chips, v5p-64 is 32
chips) and chips for v5e (v5litepod-N) and v6e (v6e-N). Multi-host slices are served as TPU VMs of 4 chips
(v5litepod-16 has 4 workers, although Google counts its physical hosts as 8 chips each); single-host v5e and
v6e slices have up to 8 chips on one VM.
"""

from __future__ import annotations

import dataclasses

from checks import LaunchError

GIB = 2**30
CHIPS_PER_MULTIHOST_WORKER = 4


@dataclasses.dataclass(frozen=True)
class Generation:
    name_prefix: str  # gcloud accelerator types are <name_prefix>-<number>
    counts_cores: bool  # the number counts TensorCores (2 per chip), not chips
    hbm_gib: int  # memory per chip
    single_host_chips: int  # the most chips one TPU VM holds
    runtime_version: str  # TPU VM software image (gcloud --version)
    gke_accelerator: str  # node label cloud.google.com/gke-tpu-accelerator
    topologies: dict[int, str]  # chips -> node label cloud.google.com/gke-tpu-topology


GENERATIONS = [
    Generation("v4", True, 32, 4, "tpu-ubuntu2204-base", "tpu-v4-podslice",
               {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}),
    Generation("v5litepod", False, 16, 8, "v2-alpha-tpuv5-lite", "tpu-v5-lite-podslice",
               {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}),
    Generation("v5p", True, 95, 4, "v2-alpha-tpuv5", "tpu-v5p-slice",
               {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}),
    Generation("v6e", False, 32, 8, "v2-alpha-tpuv6e", "tpu-v6e-slice",
               {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}),
]


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    accelerator_type: str  # gcloud --accelerator-type, e.g. v4-32
    generation: Generation
    chips: int

    @property
    def workers(self) -> int:
        """TPU VMs, one JAX process each."""
        if self.chips <= self.generation.single_host_chips:
            return 1
        return self.chips // CHIPS_PER_MULTIHOST_WORKER

    @property
    def chips_per_worker(self) -> int:
        return self.chips // self.workers

    @property
    def hbm_bytes(self) -> int:
        return self.generation.hbm_gib * GIB

    @property
    def runtime_version(self) -> str:
        return self.generation.runtime_version

    @property
    def gke_accelerator(self) -> str:
        return self.generation.gke_accelerator

    @property
    def topology(self) -> str:
        return self.generation.topologies[self.chips]

    @property
    def description(self) -> str:
        return f"{self.accelerator_type} ({self.chips} chips of {self.generation.hbm_gib} GiB)"


def _name(generation: Generation, chips: int) -> str:
    return f"{generation.name_prefix}-{chips * 2 if generation.counts_cores else chips}"


SLICES = {_name(generation, chips): TpuSlice(_name(generation, chips), generation, chips)
          for generation in GENERATIONS for chips in generation.topologies}


def tpu_slice(accelerator_type: str) -> TpuSlice:
    if accelerator_type not in SLICES:
        hint = (f" (v5e slices are named v5litepod-N: {accelerator_type.replace('v5e', 'v5litepod')}?)"
                if accelerator_type.startswith("v5e-") else "")
        raise LaunchError(f"unknown TPU type {accelerator_type!r} (--accelerator-type){hint}; known: "
                          f"{', '.join(SLICES)}")
    return SLICES[accelerator_type]
