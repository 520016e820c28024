"""What the launchers refuse before they create, copy or start anything: each refusal exits with code 2 and one
message naming the config key or flag at fault, without a traceback, and prints no commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher_runs import launcher, run_launcher

from rlreason.config import load_config

REPO = Path(__file__).resolve().parents[2]
IN_A_BUCKET = ["train.model_dir=gs://bkt/models/qwen", "train.out_dir=gs://bkt/runs/rl"]
TPU_VM = ["tpu_vm.py", "--name", "rl", "--zone", "z", "--dry-run"]
JOBSET = ["gke.py", "jobset", "--name", "rl", "--image", "img", "--bucket", "bkt", "--dry-run"]
XPK = ["gke.py", "xpk", "--name", "rl", "--cluster", "c", "--zone", "z", "--image", "img", "--dry-run"]
ON_BUCKET = ["train.model_dir=/gcs/models/qwen", "train.out_dir=/gcs/runs/rl", "task.path=/gcs/gsm8k/train.jsonl",
             "task.eval_path=/gcs/gsm8k/test.jsonl"]
GIB = 2**30


def refused(*args: str) -> str:
    """Runs launch/ARGS... (in this process, as the script runs), checks that it refused cleanly: exit code 2,
    one line of message on stderr and no commands, and returns the message."""
    result = run_launcher(*args)
    return clean_refusal(args[0], result)


def clean_refusal(script: str, result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    message = [line for line in result.stderr.splitlines() if not line.startswith("checked: ")]
    assert len(message) == 1 and message[0].startswith(f"launch/{script}: "), result.stderr
    return message[0]


def test_the_scripts_themselves_exit_with_2_and_no_traceback():
    """As a user runs them: a separate process, its exit status and its stderr."""
    for args in [[*TPU_VM, "--accelerator-type", "v4-32", "configs/tpu_v5p_64.yaml", *IN_A_BUCKET],
                 ["local.py", "--num-processes", "2", "--devices-per-process", "4", "configs/cpu_8dev.yaml",
                  "grpo.betta=1"]]:
        result = subprocess.run([sys.executable, "launch/" + args[0], *args[1:]], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert "config key" in clean_refusal(args[0], result)


@pytest.mark.parametrize("launcher, accelerator, devices", [
    (TPU_VM, "v4-32", 16),  # v4 names count TensorCores: 16 chips
    (JOBSET, "v4-32", 16),
    (TPU_VM, "v5litepod-16", 16),  # v5e names count chips
    (JOBSET, "v6e-64", 64),
])
def test_a_mesh_that_does_not_fit_the_slice_is_refused(launcher, accelerator, devices):
    """The config's mesh is 8 x 1 x 4 = 32 devices."""
    settings = IN_A_BUCKET if launcher is TPU_VM else ON_BUCKET
    message = refused(*launcher, "--accelerator-type", accelerator, "configs/tpu_v5p_64.yaml", *settings)
    assert "mesh.data=8, mesh.fsdp=1, mesh.tensor=4: their product is 32" in message
    assert f"the run has {devices} devices" in message and f"{accelerator} ({devices} chips" in message


def test_two_slices_count_twice_the_chips():
    message = refused(*XPK, "--accelerator-type", "v5p-64", "--num-slices", "2", "--mount-path", "/gcs",
                      "configs/tpu_v5p_64.yaml", *ON_BUCKET)
    assert "the run has 64 devices" in message and "2 x v5p-64 (32 chips" in message


def test_local_refuses_a_mesh_of_more_devices_than_its_processes_have():
    message = refused("local.py", "--num-processes", "2", "--devices-per-process", "2", "--dry-run",
                      "configs/cpu_8dev.yaml")
    assert "their product is 8, but the run has 4 devices" in message
    assert "2 processes x 2 CPU devices" in message


def test_a_batch_that_does_not_split_over_the_mesh_is_refused():
    message = refused(*TPU_VM, "--accelerator-type", "v5p-64", "configs/tpu_v5p_64.yaml", *IN_A_BUCKET,
                      "train.batch_size=12")
    assert "config key 'train.batch_size' (12 prompts) must be a multiple of mesh.data=8" in message


@pytest.mark.parametrize("launcher", [
    [*TPU_VM, "--accelerator-type", "v5p-64"],
    [*JOBSET, "--accelerator-type", "v5p-64"],
    [*XPK, "--accelerator-type", "v5p-64"],
    ["local.py", "--num-processes", "2", "--devices-per-process", "4", "--dry-run"],
])
def test_an_unknown_config_key_is_refused(launcher):
    config = "configs/cpu_8dev.yaml" if launcher[0] == "local.py" else "configs/tpu_v5p_64.yaml"
    message = refused(*launcher, config, "grpo.betta=0.04")
    assert "config key 'grpo.betta' is unknown. Did you mean 'grpo.beta'?" in message


@pytest.mark.parametrize("launcher", [
    [*TPU_VM, "--accelerator-type", "v5p-64"],
    [*JOBSET, "--accelerator-type", "v5p-64"],
    ["local.py", "--num-processes", "2", "--devices-per-process", "4", "--dry-run"],
])
def test_a_missing_config_file_is_refused(launcher):
    message = refused(*launcher, "configs/tpu_v5p46.yaml")
    assert "configs/tpu_v5p46.yaml" in message and "does not exist" in message


def test_a_config_outside_the_checkout_is_refused_for_the_workers_never_see_it(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text((REPO / "configs" / "tpu_v5p_64.yaml").read_text())
    assert "lies outside this repository" in refused(*TPU_VM, "--accelerator-type", "v5p-64", str(config))
    assert "lies outside" in refused(*JOBSET, "--accelerator-type", "v5p-64", str(config))


def test_an_uncommitted_config_is_refused_for_the_workers_get_the_committed_head(tmp_path):
    config = REPO / "runs" / f"uncommitted-{tmp_path.name}.yaml"  # inside the checkout, untracked (runs/ is ignored)
    config.parent.mkdir(exist_ok=True)
    config.write_text((REPO / "configs" / "tpu_v5p_64.yaml").read_text())
    try:
        message = refused(*TPU_VM, "--accelerator-type", "v5p-64", str(config.relative_to(REPO)), *IN_A_BUCKET)
    finally:
        config.unlink()
    assert "is not committed" in message


def test_a_model_too_large_for_the_chips_is_refused():
    """Qwen2.5-1.5B (1,543,714,304 params, float32) replicated on each of the 8 chips of a v5litepod-8 (mesh
    8 x 1 x 1): params + Adam's two moments = 1,543,714,304 * 4 B * 3 = 17.25 GiB > 16 GiB."""
    message = refused(*TPU_VM, "--accelerator-type", "v5litepod-8", "configs/tpu_v5e_8.yaml", *IN_A_BUCKET,
                      "mesh.data=8", "mesh.tensor=1", "train.batch_size=16")
    assert "the model does not fit v5litepod-8 (8 chips of 16 GiB)" in message
    assert "1,543,714,304 params (float32)" in message
    assert f"~{1_543_714_304 * 4 * 3 / GIB:.1f} GiB per device" in message
    assert "mesh.fsdp, mesh.tensor" in message


@pytest.mark.parametrize("mesh, beta, per_device_param_bytes", [
    ((1, 1, 1), 0.0, 558_336),  # every param on the one device
    ((1, 8, 1), 0.0, 70_912),  # fsdp=8
    ((1, 8, 1), 0.04, 70_912),  # plus the reference model
])
def test_the_memory_estimate_shards_like_training(mesh, beta, per_device_param_bytes):
    """Against the bytes measured on real arrays by `rlreason bench` (docs/parallel.md, Memory): the cpu_8dev
    model's params take 558,336 B on one device and at most 70,912 B per device with fsdp=8; Adam's two moments
    are as large again twice, the reference model once more."""
    from jax.sharding import AbstractMesh

    checks = launcher("checks")
    cfg = load_config(REPO / "configs" / "cpu_8dev.yaml", [f"grpo.beta={beta}"])
    count, needed = checks.state_bytes_per_device(cfg, cfg.model, AbstractMesh(mesh, ("data", "fsdp", "tensor")))
    assert count * 4 == 558_336
    assert needed == per_device_param_bytes * (4 if beta else 3)


def test_the_slice_table_counts_chips_as_google_names_them():
    tpu_slice = launcher("tpu_slices").tpu_slice
    for name, chips, workers in [("v4-8", 4, 1), ("v4-32", 16, 4), ("v5p-8", 4, 1), ("v5p-64", 32, 8),
                                 ("v5litepod-8", 8, 1), ("v5litepod-16", 16, 4), ("v6e-8", 8, 1), ("v6e-64", 64, 16)]:
        accelerator = tpu_slice(name)
        assert (accelerator.chips, accelerator.workers, accelerator.chips_per_worker) == (chips, workers,
                                                                                         chips // workers)
    assert "v5litepod-16?" in refused(*TPU_VM, "--accelerator-type", "v5e-16", "configs/tpu_v5p_64.yaml")
    assert [tpu_slice(name).generation.hbm_gib for name in ("v4-8", "v5litepod-8", "v5p-8", "v6e-8")] == [
        32, 16, 95, 32]


def test_outputs_on_each_workers_own_disk_are_refused():
    message = refused(*TPU_VM, "--accelerator-type", "v5p-64", "configs/tpu_v5p_64.yaml",
                      "train.model_dir=gs://bkt/models/qwen")
    assert "config key 'train.out_dir' is 'runs/default', a folder on each worker's own disk" in message
    assert "gs://BUCKET/RUN" in message and "--mount DIR" in message
    message = refused(*JOBSET, "--accelerator-type", "v5p-64", "configs/tpu_v5p_64.yaml", *ON_BUCKET,
                      "checkpoint.dir=/tmp/ckpt")
    assert "config key 'checkpoint.dir' is '/tmp/ckpt'" in message


def test_gke_refuses_inputs_the_image_does_not_hold():
    message = refused(*JOBSET, "--accelerator-type", "v5p-64", "configs/tpu_v5p_64.yaml", *ON_BUCKET[:3])
    assert "config key 'task.eval_path' is '../shared/data/gsm8k/test.jsonl', which the image" in message
    assert "under the mount '/gcs'" in message


def test_data_cannot_be_a_url_for_the_readers_read_local_files():
    message = refused(*TPU_VM, "--accelerator-type", "v5p-64", "configs/tpu_v5p_64.yaml", *IN_A_BUCKET,
                      "task.path=gs://bkt/gsm8k/train.jsonl")
    assert "config key 'task.path' is the URL 'gs://bkt/gsm8k/train.jsonl'" in message


def test_a_missing_model_directory_is_refused_before_any_process_starts(tmp_path):
    """The README's local command without its pretrain step: one clear line instead of two tracebacks."""
    message = refused("local.py", "--num-processes", "2", "--devices-per-process", "4", "configs/cpu_8dev.yaml",
                      f"train.model_dir={tmp_path / 'base'}", "train.steps=10")
    assert f"{tmp_path / 'base' / 'model.yaml'}" in message and "rlreason pretrain" in message


def test_a_missing_data_file_is_refused():
    message = refused(*TPU_VM, "--accelerator-type", "v5p-64", "configs/tpu_v5p_64.yaml", *IN_A_BUCKET,
                      "task.path=../shared/data/gsm8k/trian.jsonl")
    assert "config key 'task.path': '../shared/data/gsm8k/trian.jsonl' does not exist" in message
