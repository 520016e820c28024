"""The launchers' dry runs print complete, correct command sequences; the local launcher runs, streams, fails
fast and times out. Launchers are scripts (`python launch/X.py`), so they are run as such. What they refuse
before spending anything is in test_launch_checks.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from launcher_runs import launcher, run_launcher

from rlreason.config import load_config

REPO = Path(__file__).resolve().parents[2]
# The v5p-64 config with its model directory and outputs in a bucket (the workers cannot share a local disk).
TRAIN_SETTINGS = ["configs/tpu_v5p_64.yaml", "train.steps=100", "train.model_dir=gs://bkt/models/qwen",
                  "train.out_dir=gs://bkt/runs/rl"]
V5E_16 = ["mesh.data=4"]  # 16 chips: data=4 x tensor=4
DATA = "../shared/data/gsm8k"  # the config's task.path and task.eval_path, relative to the repository root


def launch(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"launch/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def dry_run(script: str, *args: str, settings=TRAIN_SETTINGS) -> list[tuple[str, list[str]]]:
    """The printed steps as (title, command lines)."""
    result = run_launcher(script, *args, "--dry-run", *settings)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    steps = []
    for line in result.stdout.splitlines():
        heading = re.fullmatch(r"# (\d+)\. (.*)", line)
        if heading:
            assert int(heading.group(1)) == len(steps) + 1
            steps.append((heading.group(2), []))
        else:
            steps[-1][1].append(line)
    return steps


def commands(steps) -> list[str]:
    return [line for _, lines in steps for line in lines]


def test_tpu_vm_v5e_16_creates_copies_sets_up_trains_on_4_workers_collects_fetches_and_deletes():
    steps = dry_run("tpu_vm.py", "--name", "rl-v5e", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-16",
                    "--project", "proj", "--teardown", settings=[*TRAIN_SETTINGS, *V5E_16])
    titles = [title for title, _ in steps]
    assert titles == ["create the TPU VM slice (v5litepod-16: 4 workers x 4 chips)",
                      "pack the committed HEAD of this checkout", "copy it to every worker",
                      "unpack it on every worker", "copy the run's inputs (task.path, task.eval_path) to every worker",
                      "set up Python and rlreason on every worker",
                      "train on all 4 workers at once", "collect the 4 workers' logs into logs/rl-v5e",
                      "fetch the run's metrics, samples, config and model from gs://bkt/runs/rl into runs/rl-v5e",
                      "delete the slice"]
    create, pack, copy, unpack, inputs, setup, train, collect, fetch, delete = (lines for _, lines in steps)
    assert create == ["gcloud compute tpus tpu-vm create rl-v5e --accelerator-type=v5litepod-16 "
                      "--version=v2-alpha-tpuv5-lite --zone=us-west4-a --project=proj"]
    assert pack == [f"git -C {REPO} archive --format=tar.gz --prefix=rlreason/ -o /tmp/rlreason-rl-v5e.tar.gz HEAD"]
    assert copy == ["gcloud compute tpus tpu-vm scp /tmp/rlreason-rl-v5e.tar.gz rl-v5e:rlreason.tar.gz --worker=all "
                    "--zone=us-west4-a --project=proj"]
    assert "tar -xzf ~/rlreason.tar.gz -C ~" in unpack[0] and "--worker=all" in unpack[0]
    # The data files beside the checkout land beside each worker's checkout (~/rlreason/../shared = ~/shared).
    assert inputs == [
        "gcloud compute tpus tpu-vm ssh rl-v5e --worker=all --command 'mkdir -p ~/shared/data/gsm8k' "
        "--zone=us-west4-a --project=proj"] + [
        f"gcloud compute tpus tpu-vm scp --recurse {(REPO / DATA).resolve()}/{name}.jsonl "
        f"rl-v5e:shared/data/gsm8k/ --worker=all --zone=us-west4-a --project=proj" for name in ("train", "test")]
    assert "uv venv --python 3.11 .venv" in setup[0] and "jax[tpu]" in setup[0] and "--worker=all" in setup[0]
    assert '-e ".[gcs]"' in setup[0]  # gcsfs: orbax and etils reach gs:// through it
    assert train == ["gcloud compute tpus tpu-vm ssh rl-v5e --worker=all --command 'set -o pipefail; cd ~/rlreason "
                     "&& source .venv/bin/activate && PYTHONUNBUFFERED=1 rlreason train configs/tpu_v5p_64.yaml "
                     "train.steps=100 train.model_dir=gs://bkt/models/qwen train.out_dir=gs://bkt/runs/rl "
                     "mesh.data=4 distributed.mode=cluster 2>&1 | tee ~/rlreason-train.log' --zone=us-west4-a "
                     "--project=proj"]
    assert collect == ["mkdir -p logs/rl-v5e"] + [
        f"gcloud compute tpus tpu-vm scp rl-v5e:rlreason-train.log logs/rl-v5e/worker-{worker}.log "
        f"--worker={worker} --zone=us-west4-a --project=proj" for worker in range(4)]
    assert fetch == ["mkdir -p runs/rl-v5e && gcloud storage cp --recursive gs://bkt/runs/rl/metrics.jsonl "
                     "gs://bkt/runs/rl/samples.jsonl gs://bkt/runs/rl/config.yaml gs://bkt/runs/rl/model runs/rl-v5e"]
    assert delete == ["gcloud compute tpus tpu-vm delete rl-v5e --quiet --zone=us-west4-a --project=proj"]


def test_tpu_vm_v4_32_through_a_queued_resource_and_a_git_clone():
    steps = dry_run("tpu_vm.py", "--name", "rl-v4", "--zone", "us-central2-b", "--accelerator-type", "v4-32",
                    "--queued", "--git-url", "https://example.com/rlreason.git", "--git-ref", "v1", "--teardown",
                    settings=[*TRAIN_SETTINGS, "mesh.data=4"])  # v4-32: 16 chips
    lines = commands(steps)
    assert lines[0] == ("gcloud compute tpus queued-resources create rl-v4 --node-id=rl-v4 --accelerator-type=v4-32 "
                        "--runtime-version=tpu-ubuntu2204-base --zone=us-central2-b")
    assert "queued-resources describe rl-v4" in lines[1] and "= ACTIVE ]" in lines[1]
    assert "git clone --depth=1 --branch=v1 https://example.com/rlreason.git rlreason" in lines[2]
    assert sum("tpu-vm scp rl-v4:rlreason-train.log" in line for line in lines) == 4  # 16 chips = 4 VMs of 4
    assert lines[-1] == "gcloud compute tpus queued-resources delete rl-v4 --force --quiet --zone=us-central2-b"


def test_tpu_vm_reuse_without_teardown_neither_creates_nor_deletes():
    lines = commands(dry_run("tpu_vm.py", "--name", "rl", "--zone", "z", "--accelerator-type", "v5p-64", "--reuse"))
    assert not any("create" in line or "delete" in line for line in lines)
    assert sum("tpu-vm scp rl:rlreason-train.log" in line for line in lines) == 8  # v5p-64: 32 chips, 8 VMs


def test_tpu_vm_on_a_shared_mount_copies_no_inputs_and_fetches_the_results_from_worker_0():
    """Inputs and outputs under --mount are on every worker already; the results come back over scp."""
    settings = ["configs/tpu_v5p_64.yaml", "train.model_dir=/mnt/fs/models/qwen", "train.out_dir=/mnt/fs/runs/rl",
                "task.path=/mnt/fs/gsm8k/train.jsonl", "task.eval_path=/mnt/fs/gsm8k/test.jsonl"]
    steps = dry_run("tpu_vm.py", "--name", "rl", "--zone", "z", "--accelerator-type", "v5p-64", "--reuse",
                    "--mount", "/mnt/fs", settings=settings)
    assert not any("copy the run's inputs" in title for title, _ in steps)
    title, fetch = steps[-1]
    assert title == "fetch the run's metrics, samples, config and model from /mnt/fs/runs/rl into runs/rl"
    assert fetch == ["mkdir -p runs/rl && gcloud compute tpus tpu-vm scp --recurse rl:/mnt/fs/runs/rl/metrics.jsonl "
                     "rl:/mnt/fs/runs/rl/samples.jsonl rl:/mnt/fs/runs/rl/config.yaml rl:/mnt/fs/runs/rl/model "
                     "runs/rl --worker=0 --zone=z"]


def test_tpu_vm_rejects_an_unknown_slice_type():
    result = run_launcher("tpu_vm.py", "--name", "x", "--zone", "z", "--accelerator-type", "v9-1", "--dry-run",
                          "configs/tpu_v5p_64.yaml")
    assert result.returncode == 2 and "unknown TPU type 'v9-1'" in result.stderr
    assert "Traceback" not in result.stderr


# Every input in the bucket that the JobSet mounts at /gcs (the image holds code and configs only).
ON_BUCKET = ["train.model_dir=/gcs/models/qwen", "train.out_dir=/gcs/runs/rl", "task.path=/gcs/gsm8k/train.jsonl",
             "task.eval_path=/gcs/gsm8k/test.jsonl"]


@pytest.mark.parametrize("accelerator, pods, chips, label, topology", [
    ("v5litepod-16", 4, 4, "tpu-v5-lite-podslice", "4x4"),
    ("v4-32", 4, 4, "tpu-v4-podslice", "2x2x4"),
])
def test_gke_jobset_runs_one_pod_per_tpu_vm_with_the_bucket_mounted(accelerator, pods, chips, label, topology):
    settings = ["configs/tpu_v5p_64.yaml", "train.steps=100", "mesh.data=4", *ON_BUCKET]  # 16 chips
    steps = dry_run("gke.py", "jobset", "--name", "rl", "--accelerator-type", accelerator, "--image", "img:tpu",
                    "--bucket", "bkt", "--service-account", "rl-ksa", "--teardown", settings=settings)
    (write, manifest_lines), (_, submit), (_, wait), (_, collect), (_, delete) = steps
    assert manifest_lines[0] == "cat > rl-jobset.yaml <<'EOF'" and manifest_lines[-1] == "EOF"
    manifest = yaml.safe_load("\n".join(manifest_lines[1:-1]))
    assert manifest["kind"] == "JobSet" and manifest["metadata"]["name"] == "rl"
    job = manifest["spec"]["replicatedJobs"][0]
    assert job["replicas"] == 1
    assert job["template"]["spec"]["parallelism"] == job["template"]["spec"]["completions"] == pods
    pod_template = job["template"]["spec"]["template"]
    assert pod_template["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}  # the CSI driver's sidecar
    pod = pod_template["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": label,
                                   "cloud.google.com/gke-tpu-topology": topology}
    assert pod["serviceAccountName"] == "rl-ksa"
    assert pod["volumes"] == [{"name": "gcs", "csi": {"driver": "gcsfuse.csi.storage.gke.io", "volumeAttributes": {
        "bucketName": "bkt", "mountOptions": "implicit-dirs"}}}]
    container = pod["containers"][0]
    assert container["image"] == "img:tpu" and container["resources"]["limits"]["google.com/tpu"] == chips
    assert container["volumeMounts"] == [{"name": "gcs", "mountPath": "/gcs"}]
    assert container["command"] == ["bash", "-c", "PYTHONUNBUFFERED=1 rlreason train configs/tpu_v5p_64.yaml "
                                    "train.steps=100 mesh.data=4 " + " ".join(ON_BUCKET) + " distributed.mode=cluster"]
    assert submit == ["kubectl apply -f rl-jobset.yaml"]
    assert "kubectl get jobset rl" in wait[0] and "grep -qw Completed" in wait[0]
    assert "jobset.sigs.k8s.io/jobset-name=rl" in collect[0]
    assert delete == ["kubectl delete jobset rl"]


def test_gke_xpk_submits_a_workload_for_the_slices():
    """2 slices of v5litepod-16 are the 32 devices of the config's 8 x 1 x 4 mesh."""
    settings = ["configs/tpu_v5p_64.yaml", "train.steps=100", "train.out_dir=gs://bkt/runs/rl", *ON_BUCKET[:1],
                *ON_BUCKET[2:]]
    lines = commands(dry_run("gke.py", "xpk", "--name", "rl", "--cluster", "c1", "--zone", "us-west4-a",
                             "--accelerator-type", "v5litepod-16", "--num-slices", "2", "--image", "img",
                             "--mount-path", "/gcs", settings=settings))
    assert lines == ["xpk workload create --cluster c1 --zone us-west4-a --workload rl --tpu-type=v5litepod-16 "
                     "--num-slices=2 --docker-image img --command 'rlreason train configs/tpu_v5p_64.yaml "
                     "train.steps=100 train.out_dir=gs://bkt/runs/rl train.model_dir=/gcs/models/qwen "
                     "task.path=/gcs/gsm8k/train.jsonl task.eval_path=/gcs/gsm8k/test.jsonl distributed.mode=cluster'"]


def test_local_dry_run_gives_each_process_its_id_and_the_shared_coordinator(tiny_base_model):
    from tiny_run import TINY_OVERRIDES

    tiny_model = [override for override in TINY_OVERRIDES if override.startswith("model.")]  # the base's shape
    settings = ["configs/demo_cpu.yaml", f"train.model_dir={tiny_base_model}", *tiny_model, "train.steps=100"]
    lines = commands(dry_run("local.py", "--num-processes", "2", "--devices-per-process", "4", "--port", "4321",
                             settings=settings))
    assert len(lines) == 3 and lines[-1] == "wait"
    for process_id, line in enumerate(lines[:2]):
        assert line.startswith("JAX_PLATFORMS=cpu ") and line.endswith(" &")
        assert (f"-m rlreason train {' '.join(settings)} "
                f"distributed.mode=manual distributed.coordinator_address=127.0.0.1:4321 distributed.num_processes=2 "
                f"distributed.process_id={process_id} distributed.local_device_count=4 "
                f"distributed.heartbeat_timeout_s=10 &") in line


def one_fails(started_marker) -> str:
    """A stand-in program: process 0 works for a minute; process 1 fails once process 0 has started (waiting
    for it keeps the test from racing process 0's start-up on a loaded machine)."""
    return (f"bash -c 'case \"$*\" in *process_id=1*) until [ -e {started_marker} ]; do sleep 0.05; done; "
            f"echo failing; exit 3;; *) echo working; touch {started_marker}; sleep 60;; esac' _")


def test_local_stops_every_process_when_one_fails(tmp_path):
    started = time.monotonic()
    result = launch("local.py", "--num-processes", "2", "--devices-per-process", "1",
                    "--program", one_fails(tmp_path / "p0_started"), "configs/demo_cpu.yaml", timeout=60)
    assert result.returncode == 3
    assert time.monotonic() - started < 40  # the config check, then at once: not process 0's minute
    assert "[p0] working" in result.stdout and "[p1] failing" in result.stdout
    assert "every process is stopped" in result.stderr


def test_local_times_out_with_124():
    result = launch("local.py", "--num-processes", "2", "--devices-per-process", "1", "--timeout", "1",
                    "--program", "bash -c 'sleep 60' _", "configs/demo_cpu.yaml", timeout=60)
    assert result.returncode == 124 and "timed out" in result.stderr


def test_local_succeeds_when_every_process_does():
    result = launch("local.py", "--num-processes", "3", "--devices-per-process", "1",
                    "--program", "bash -c 'echo \"${@: -3:1}\"' _", "configs/demo_cpu.yaml", "train.batch_size=6",
                    timeout=60)
    assert result.returncode == 0
    assert sorted(result.stdout.splitlines()) == [f"[p{index}] distributed.process_id={index}" for index in range(3)]


def test_after_a_failed_step_only_the_always_steps_run(tmp_path):
    steps = launcher("steps")
    marker = tmp_path / "ran"
    code = steps.execute([steps.Step("fail", "exit 5"), steps.Step("skipped", f"echo skipped >> {marker}"),
                          steps.Step("cleanup", f"echo cleanup >> {marker}", always=True)])
    assert code == 5
    assert marker.read_text().split() == ["cleanup"]


def test_the_peer_comparison_refuses_without_the_peers_environments(tmp_path):
    result = subprocess.run([sys.executable, "launch/compare_peers.py", "--peers-home", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no environment for trl, tunix" in result.stderr and "setup.sh" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_peers_run_with_huge_pages_only_when_asked(tmp_path, monkeypatch):
    """--peers-huge-pages hands a peer harness the host allocator setting rlreason's command line gives itself;
    without it the harness gets the caller's environment. The peer's "python" here prints what it was given."""
    fake_python = tmp_path / "trl" / "bin" / "python"
    fake_python.parent.mkdir(parents=True)
    fake_python.write_text('#!/bin/sh\necho "{\\"median_step_s\\": 1.0, \\"tunables\\": \\"$GLIBC_TUNABLES\\"}"\n')
    fake_python.chmod(0o755)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    compare = launcher("compare_peers")
    monkeypatch.setattr(compare, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(compare.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert compare.run_peer("trl", tmp_path, 1)["tunables"] == "glibc.malloc.arena_max=2"
    assert compare.run_peer("trl", tmp_path, 1, huge_pages=True)["tunables"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


def test_the_scaling_sweep_widens_the_model_in_the_base_shape():
    base = load_config(REPO / "configs" / "bench_peers.yaml").model  # hidden 256: 4 heads of 64, 2 KV, MLP 688
    assert launcher("scaling").width_overrides(base, 1024) == [
        "model.hidden_size=1024", "model.num_heads=16", "model.num_kv_heads=8", "model.intermediate_size=2752"]


def test_the_scaling_plan_lists_each_point_with_its_overrides_and_weights():
    from tiny_run import TINY_OVERRIDES  # 2 layers of hidden 48, 4 query and 2 KV heads of 12, MLP 96, vocab 96

    result = run_launcher("scaling.py", "configs/demo_cpu.yaml", *TINY_OVERRIDES, "--plan", "--layers", "2,3",
                          "--hidden", "96", "--generations", "4", "--completion", "")
    assert result.returncode == 0, result.stderr
    layer = 48 * (48 + 24 + 24 + 48) + 3 * 48 * 96  # q, k, v, o and the MLP
    wide_layer = 96 * (96 + 48 + 48 + 96) + 3 * 96 * 192  # 8 query and 4 KV heads of 12, MLP 192
    assert result.stdout.splitlines() == [
        f"hidden=96: {2 * wide_layer + 96 * 96:,} matmul weights  model.hidden_size=96 model.num_heads=8 "
        "model.num_kv_heads=4 model.intermediate_size=192",
        f"layers=2: {2 * layer + 48 * 96:,} matmul weights  model.num_layers=2",
        f"layers=3: {3 * layer + 48 * 96:,} matmul weights  model.num_layers=3",
        f"generations=4: {2 * layer + 48 * 96:,} matmul weights  grpo.num_generations=4  (a config already "
        "listed: timed once)"]


def test_the_scaling_sweep_benches_each_point_and_writes_the_table_plot_and_figures(tmp_path):
    from tiny_run import TINY_OVERRIDES

    out = tmp_path / "scaling"
    result = run_launcher("scaling.py", "configs/demo_cpu.yaml", *TINY_OVERRIDES, "--out", str(out),
                          "--layers", "1", "--hidden", "", "--generations", "", "--completion", "")
    assert result.returncode == 0, result.stderr
    (point,) = json.loads(out.with_suffix(".json").read_text())["points"]
    assert (point["knob"], point["value"], point["overrides"]) == ("layers", 1, ["model.num_layers=1"])
    # The bench ran the point's model: one layer (q, k, v, o, MLP, two norms), tied embeddings, the final norm.
    parameters = 96 * 48 + (48 * 48 + 2 * 48 * 24 + 48 * 48 + 3 * 48 * 96 + 2 * 48) + 48
    assert point["bench"]["params_bytes_per_device"] == 4 * parameters and point["bench"]["median_step_s"] > 0
    rows = [line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[:2] for row in rows[2:]] == [["| layers", "1"]]
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_the_scaling_sweep_refuses_a_value_that_is_not_a_number():
    result = run_launcher("scaling.py", "--layers", "4,eight")
    assert result.returncode == 2
    assert "--layers: 'eight' is not a whole number" in result.stderr and "Traceback" not in result.stderr
