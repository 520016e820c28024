"""The shipped accelerator configs fit their chips: `rlreason bench --memory` compiles each config's GRPO step for
its mesh (simulated CPU devices) and its peak per device must leave a tenth of the chip's memory free.

The figure is XLA's CPU compiler's analysis of the same program, an estimate of what the accelerator's compiler
will need (it schedules differently). The model is the configs' own architecture, randomly initialised (no weights
are read); the addition task and a tokenizer trained on it stand in for GSM8K and the model's tokenizer: with
prompt buckets off, the batch is max_prompt_length wide whatever the prompts, so the shapes are the run's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, python_env

# config -> (devices of its mesh, memory per chip in GiB): a 24 GB GPU, TPU v5e (16 GB), TPU v5p (95 GB).
CHIPS = {
    "configs/gpu_1.yaml": (1, 24),
    "configs/tpu_v5e_8.yaml": (8, 16),
    "configs/tpu_v5p_64.yaml": (32, 95),
}


SLOW = {"configs/tpu_v5p_64.yaml"}  # 32 simulated devices


@pytest.mark.parametrize("config, devices, chip_gib", [
    pytest.param(config, devices, chip_gib, marks=[pytest.mark.slow] if config in SLOW else [])
    for config, (devices, chip_gib) in CHIPS.items()])
def test_the_shipped_config_fits_its_chip(config, devices, chip_gib):
    # The compiler's own settings (not the suite's faster-compiling ones), as `rlreason bench --memory` runs.
    env = dict(python_env(), JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    result = subprocess.run(
        [sys.executable, "-m", "rlreason", "bench", "--memory", config, "train.model_dir=", "tokenizer.path=",
         "task.name=addition", "distributed.mode=single"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["device"] == f"{devices} x cpu"
    assert figures["peak_bytes"] < 0.9 * chip_gib * 2**30, f"{figures['peak_bytes'] / 2**30:.1f} GiB per device"
    # The whole step is counted: the state (float32 master weights and Adam's moments) is in the arguments.
    assert figures["argument_bytes"] > figures["donated_bytes"] > 0
