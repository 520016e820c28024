"""The mesh/hardware configs load, their meshes and batches fit the hardware each one is written for, and the
GSM8K ones read separate train and test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlreason.config import load_config
from rlreason.parallel.mesh import mesh_shape


@pytest.mark.parametrize("name, devices, processes", [
    ("cpu_8dev", 8, 1),
    ("gpu_1", 1, 1),
    ("tpu_v5e_8", 8, 1),  # v5litepod-8: one VM of 8 chips
    ("tpu_v5p_64", 32, 8),  # v5p-64: 32 chips on 8 VMs of 4
])
def test_config_fits_its_hardware(name, devices, processes):
    cfg = load_config(f"configs/{name}.yaml")
    data, fsdp, tensor = mesh_shape(cfg.mesh, devices)
    assert cfg.distributed.mode == ("cluster" if processes > 1 else "single")
    if name.startswith("cpu"):
        assert cfg.distributed.local_device_count == devices
    rollouts = cfg.train.batch_size * cfg.grpo.num_generations
    assert rollouts % (data * fsdp) == 0, "the rollouts must split evenly over the batch axes"
    assert cfg.eval.batch_size % (data * fsdp) == 0
    for size in (cfg.model.num_heads, cfg.model.intermediate_size, cfg.model.vocab_size):
        assert size % tensor == 0
    assert cfg.model.hidden_size % fsdp == 0
    if processes > 1:
        # Tensor groups stay within one VM: its chips share the fast interconnect of one host.
        assert (devices // processes) % tensor == 0


@pytest.mark.parametrize("name", ["gpu_1", "tpu_v5e_8", "tpu_v5p_64"])
def test_gsm8k_configs_train_on_the_train_file_and_score_with_the_gsm8k_reward(name):
    """One file each for training and held-out evaluation (a folder would be read whole, mixing the two)."""
    cfg = load_config(f"configs/{name}.yaml")
    task, grpo = cfg.task, cfg.grpo
    assert task.name == "gsm8k"
    train_file, eval_file = Path(task.path), Path(task.eval_path)
    assert (train_file.name, eval_file.name) == ("train.jsonl", "test.jsonl")
    assert train_file.parent == eval_file.parent
    assert grpo.accuracy_reward == "gsm8k" and "gsm8k" in [reward.name for reward in grpo.rewards]
    if train_file.parent.is_dir():  # the shared data folder beside the checkout, where there is one
        assert train_file.is_file() and eval_file.is_file()
