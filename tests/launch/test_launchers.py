"""The launchers' dry runs print complete, correct command sequences; the local launcher runs, streams, fails
fast and times out. Launchers are scripts (`python launch/X.py`), so they are run as such."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TRAIN_SETTINGS = ["configs/tpu_v5p_64.yaml", "train.steps=100"]


def launch(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"launch/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def dry_run(script: str, *args: str) -> list[tuple[str, list[str]]]:
    """The printed steps as (title, command lines)."""
    result = launch(script, *args, "--dry-run", *TRAIN_SETTINGS)
    assert result.returncode == 0, result.stderr
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


def test_tpu_vm_v5e_16_creates_copies_sets_up_trains_on_4_workers_collects_and_deletes():
    steps = dry_run("tpu_vm.py", "--name", "rl-v5e", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-16",
                    "--project", "proj", "--teardown")
    titles = [title for title, _ in steps]
    assert titles == ["create the TPU VM slice (v5litepod-16: 4 workers x 4 chips)",
                      "pack the committed HEAD of this checkout", "copy it to every worker",
                      "unpack it on every worker", "set up Python and rlreason on every worker",
                      "train on all 4 workers at once", "collect the 4 workers' logs into logs/rl-v5e",
                      "delete the slice"]
    create, pack, copy, unpack, setup, train, collect, delete = (lines for _, lines in steps)
    assert create == ["gcloud compute tpus tpu-vm create rl-v5e --accelerator-type=v5litepod-16 "
                      "--version=v2-alpha-tpuv5-lite --zone=us-west4-a --project=proj"]
    assert pack == [f"git -C {REPO} archive --format=tar.gz --prefix=rlreason/ -o /tmp/rlreason-rl-v5e.tar.gz HEAD"]
    assert copy == ["gcloud compute tpus tpu-vm scp /tmp/rlreason-rl-v5e.tar.gz rl-v5e:rlreason.tar.gz --worker=all "
                    "--zone=us-west4-a --project=proj"]
    assert "tar -xzf ~/rlreason.tar.gz -C ~" in unpack[0] and "--worker=all" in unpack[0]
    assert "uv venv --python 3.11 .venv" in setup[0] and "jax[tpu]" in setup[0] and "--worker=all" in setup[0]
    assert train == ["gcloud compute tpus tpu-vm ssh rl-v5e --worker=all --command 'set -o pipefail; cd ~/rlreason "
                     "&& source .venv/bin/activate && PYTHONUNBUFFERED=1 rlreason train configs/tpu_v5p_64.yaml "
                     "train.steps=100 distributed.mode=cluster 2>&1 | tee ~/rlreason-train.log' --zone=us-west4-a "
                     "--project=proj"]
    assert collect == ["mkdir -p logs/rl-v5e"] + [
        f"gcloud compute tpus tpu-vm scp rl-v5e:rlreason-train.log logs/rl-v5e/worker-{worker}.log "
        f"--worker={worker} --zone=us-west4-a --project=proj" for worker in range(4)]
    assert delete == ["gcloud compute tpus tpu-vm delete rl-v5e --quiet --zone=us-west4-a --project=proj"]


def test_tpu_vm_v4_32_through_a_queued_resource_and_a_git_clone():
    steps = dry_run("tpu_vm.py", "--name", "rl-v4", "--zone", "us-central2-b", "--accelerator-type", "v4-32",
                    "--queued", "--git-url", "https://example.com/rlreason.git", "--git-ref", "v1", "--teardown")
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


def test_tpu_vm_rejects_an_unknown_slice_type():
    result = launch("tpu_vm.py", "--name", "x", "--zone", "z", "--accelerator-type", "v9-1", "--dry-run", "c.yaml")
    assert result.returncode != 0 and "unknown TPU type 'v9-1'" in result.stderr


@pytest.mark.parametrize("accelerator, pods, chips, label, topology", [
    ("v5litepod-16", 4, 4, "tpu-v5-lite-podslice", "4x4"),
    ("v4-32", 4, 4, "tpu-v4-podslice", "2x2x4"),
])
def test_gke_jobset_runs_one_pod_per_tpu_vm(accelerator, pods, chips, label, topology):
    steps = dry_run("gke.py", "jobset", "--name", "rl", "--accelerator-type", accelerator, "--image", "img:tpu",
                    "--teardown")
    (write, manifest_lines), (_, submit), (_, wait), (_, collect), (_, delete) = steps
    assert manifest_lines[0] == "cat > rl-jobset.yaml <<'EOF'" and manifest_lines[-1] == "EOF"
    manifest = yaml.safe_load("\n".join(manifest_lines[1:-1]))
    assert manifest["kind"] == "JobSet" and manifest["metadata"]["name"] == "rl"
    job = manifest["spec"]["replicatedJobs"][0]
    assert job["replicas"] == 1
    assert job["template"]["spec"]["parallelism"] == job["template"]["spec"]["completions"] == pods
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": label,
                                   "cloud.google.com/gke-tpu-topology": topology}
    container = pod["containers"][0]
    assert container["image"] == "img:tpu" and container["resources"]["limits"]["google.com/tpu"] == chips
    assert container["command"] == ["bash", "-c", "PYTHONUNBUFFERED=1 rlreason train configs/tpu_v5p_64.yaml "
                                    "train.steps=100 distributed.mode=cluster"]
    assert submit == ["kubectl apply -f rl-jobset.yaml"]
    assert "kubectl get jobset rl" in wait[0] and "grep -qw Completed" in wait[0]
    assert "jobset.sigs.k8s.io/jobset-name=rl" in collect[0]
    assert delete == ["kubectl delete jobset rl"]


def test_gke_xpk_submits_a_workload_for_the_slices():
    lines = commands(dry_run("gke.py", "xpk", "--name", "rl", "--cluster", "c1", "--zone", "us-west4-a",
                             "--accelerator-type", "v5litepod-16", "--num-slices", "2", "--image", "img"))
    assert lines == ["xpk workload create --cluster c1 --zone us-west4-a --workload rl --tpu-type=v5litepod-16 "
                     "--num-slices=2 --docker-image img --command 'rlreason train configs/tpu_v5p_64.yaml "
                     "train.steps=100 distributed.mode=cluster'"]


def test_local_dry_run_gives_each_process_its_id_and_the_shared_coordinator():
    lines = commands(dry_run("local.py", "--num-processes", "2", "--devices-per-process", "4", "--port", "4321"))
    assert len(lines) == 3 and lines[-1] == "wait"
    for process_id, line in enumerate(lines[:2]):
        assert line.startswith("JAX_PLATFORMS=cpu ") and line.endswith(" &")
        assert (f"-m rlreason train configs/tpu_v5p_64.yaml train.steps=100 distributed.mode=manual "
                f"distributed.coordinator_address=127.0.0.1:4321 distributed.num_processes=2 "
                f"distributed.process_id={process_id} distributed.local_device_count=4 "
                f"distributed.heartbeat_timeout_s=10 &") in line


# A stand-in program: process 1 fails at once, process 0 would run for a minute.
ONE_FAILS = "bash -c 'case \"$*\" in *process_id=1*) echo failing; exit 3;; *) echo working; sleep 60;; esac' _"


def test_local_stops_every_process_when_one_fails():
    started = time.monotonic()
    result = launch("local.py", "--num-processes", "2", "--devices-per-process", "1", "--program", ONE_FAILS,
                    "c.yaml", timeout=30)
    assert result.returncode == 3
    assert time.monotonic() - started < 15
    assert "[p0] working" in result.stdout and "[p1] failing" in result.stdout
    assert "every process is stopped" in result.stderr


def test_local_times_out_with_124():
    result = launch("local.py", "--num-processes", "2", "--devices-per-process", "1", "--timeout", "1",
                    "--program", "bash -c 'sleep 60' _", "c.yaml", timeout=30)
    assert result.returncode == 124 and "timed out" in result.stderr


def test_local_succeeds_when_every_process_does():
    result = launch("local.py", "--num-processes", "3", "--devices-per-process", "1",
                    "--program", "bash -c 'echo \"${@: -3:1}\"' _", "c.yaml", timeout=30)
    assert result.returncode == 0
    assert sorted(result.stdout.splitlines()) == [f"[p{index}] distributed.process_id={index}" for index in range(3)]


def load_steps_module():
    spec = importlib.util.spec_from_file_location("launch_steps", REPO / "launch" / "steps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_after_a_failed_step_only_the_always_steps_run(tmp_path):
    steps = load_steps_module()
    marker = tmp_path / "ran"
    code = steps.execute([steps.Step("fail", "exit 5"), steps.Step("skipped", f"echo skipped >> {marker}"),
                          steps.Step("cleanup", f"echo cleanup >> {marker}", always=True)])
    assert code == 5
    assert marker.read_text().split() == ["cleanup"]
