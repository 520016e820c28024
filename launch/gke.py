"""Train on TPU slices in a GKE cluster, either as a JobSet manifest applied with kubectl or through xpk.

    python launch/gke.py jobset --name rl-v5p --accelerator-type v5p-64 --image IMAGE --bucket BUCKET \\
        --dry-run configs/tpu_v5p_64.yaml train.model_dir=/gcs/models/qwen2.5-1.5b train.out_dir=/gcs/runs/rl-v5p \\
        task.path=/gcs/data/gsm8k/train.jsonl task.eval_path=/gcs/data/gsm8k/test.jsonl
    python launch/gke.py xpk --name rl-v5p --cluster CLUSTER --zone us-east5-a --accelerator-type v5p-64 \\
        --image IMAGE --mount-path /gcs --dry-run configs/tpu_v5p_64.yaml train.out_dir=gs://BUCKET/runs/rl ...

Before anything is submitted, the config is loaded and checked as training checks it (launch/checks.py):
unknown keys, the mesh against the slice's chips (times --num-slices), the training state against their
memory, and where the run's files live. The JobSet runs one pod per TPU VM of the slice (an indexed Job). GKE
gives every pod its worker id and the slice's hostnames, so `rlreason train ... distributed.mode=cluster` finds
the coordinator by itself. Several slices (--num-slices) go through xpk, which also sets the MEGASCALE_*
variables that join slices. IMAGE must contain rlreason installed with jax[tpu] and gcsfs, e.g. built from
launch/Dockerfile.tpu; CONFIG is a file under configs/, which the image holds.

Storage: the image holds code and configs only, so the model directory and data files must be in a bucket, and
train.out_dir must outlive the pods. `jobset --bucket BUCKET` mounts the bucket in every pod at --mount-path
(default /gcs) with the Cloud Storage FUSE CSI driver (the pods' Kubernetes service account, --service-account,
needs access to it through Workload Identity). For xpk, attach a bucket to the cluster once with
`xpk storage attach NAME --type=gcsfuse --bucket=BUCKET --mount-point=/gcs --auto-mount=true ...` and pass
--mount-path /gcs. Caveat: gcsfuse does not rename a folder atomically (except on buckets with hierarchical
namespace), and orbax finalizes a checkpoint by renaming its temporary folder, so a pod killed during that
rename can leave a partial checkpoint, which a resume sets aside as unreadable before falling back to the
previous one. A gs:// checkpoint.dir (or train.out_dir) avoids this: orbax then writes through GCS's own API
and marks a finished checkpoint with a commit file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from checks import REPO, Devices, LaunchError, check_outputs, check_run, guarded, report, worker_inputs
from steps import Step, run_or_print, train_command
from tpu_slices import TpuSlice, tpu_slice

from rlreason.config import ConfigError, load_config

TPU_PORTS = (8471, 8080)  # the TPU runtime's ports, as in GKE's multi-host TPU examples
CLUSTER = ["distributed.mode=cluster"]  # JAX reads the coordinator, process count and ids from GKE's variables
IMAGE_CONFIGS = REPO / "configs"  # what launch/Dockerfile.tpu copies into the image, beside the code


def jobset_manifest(args: argparse.Namespace, accelerator: TpuSlice, command: list[str]) -> str:
    """A JobSet of one indexed Job of `accelerator.workers` pods, each pod holding one TPU VM's chips and, with
    --bucket, the bucket mounted at --mount-path by the Cloud Storage FUSE CSI driver."""
    ports = "\n".join(f"                - containerPort: {port}" for port in TPU_PORTS)
    pod_metadata = storage = mounts = ""
    if args.bucket:
        pod_metadata = """
            metadata:
              annotations:
                gke-gcsfuse/volumes: 'true'"""
        storage = f"""
              serviceAccountName: {args.service_account}
              volumes:
              - name: gcs
                csi:
                  driver: gcsfuse.csi.storage.gke.io
                  volumeAttributes:
                    bucketName: {args.bucket}
                    mountOptions: implicit-dirs"""
        mounts = f"""
                volumeMounts:
                - name: gcs
                  mountPath: {args.mount_path}"""
    return f"""apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: {args.name}
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: 0
  replicatedJobs:
    - name: slice
      replicas: 1
      template:
        spec:
          parallelism: {accelerator.workers}
          completions: {accelerator.workers}
          backoffLimit: 0
          template:{pod_metadata}
            spec:
              restartPolicy: Never
              hostNetwork: true
              dnsPolicy: ClusterFirstWithHostNet
              nodeSelector:
                cloud.google.com/gke-tpu-accelerator: {accelerator.gke_accelerator}
                cloud.google.com/gke-tpu-topology: {accelerator.topology}{storage}
              containers:
              - name: rlreason
                image: {args.image}
                command: {_yaml_list(["bash", "-c", f"PYTHONUNBUFFERED=1 {shlex.join(command)}"])}
                ports:
{ports}
                securityContext:
                  privileged: true
                resources:
                  limits:
                    google.com/tpu: {accelerator.chips_per_worker}{mounts}
"""


def _yaml_list(items: list[str]) -> str:
    """A flow-style YAML list of strings (JSON strings are valid YAML)."""
    return json.dumps(items)


def jobset_steps(args: argparse.Namespace) -> list[Step]:
    accelerator = tpu_slice(args.accelerator_type)
    command = train_command(args.config, args.overrides, CLUSTER)
    manifest = jobset_manifest(args, accelerator, command)
    selector = f"jobset.sigs.k8s.io/jobset-name={args.name}"
    status = shlex.join(["kubectl", "get", "jobset", args.name,
                         "-o", "jsonpath={.status.conditions[?(@.status==\"True\")].type}"])
    steps = [
        Step(f"write the JobSet manifest ({args.accelerator_type}: {accelerator.workers} pods of "
             f"{accelerator.chips_per_worker} chips)", f"cat > {shlex.quote(args.manifest)} <<'EOF'\n{manifest}EOF"),
        Step("submit it", shlex.join(["kubectl", "apply", "-f", args.manifest])),
        Step("wait until it completes or fails (exit 1 unless Completed)",
             f"until {status} | grep -qwE 'Completed|Failed'; do sleep 30; done; {status} | grep -qw Completed"),
        Step(f"collect each pod's log into {args.log_dir}",
             f"mkdir -p {shlex.quote(args.log_dir)} && for pod in $(kubectl get pods -l {selector} -o name); do "
             f"kubectl logs \"$pod\" > {shlex.quote(args.log_dir)}/\"${{pod#pod/}}\".log; done", always=True),
    ]
    if args.teardown:
        steps.append(Step("delete the JobSet and its pods", shlex.join(["kubectl", "delete", "jobset", args.name]),
                          always=True))
    return steps


def xpk_steps(args: argparse.Namespace) -> list[Step]:
    location = ["--cluster", args.cluster, "--zone", args.zone] + (["--project", args.project] if args.project else [])
    command = shlex.join(train_command(args.config, args.overrides, CLUSTER))
    steps = [Step(f"submit the workload ({args.num_slices} x {args.accelerator_type})", shlex.join([
        "xpk", "workload", "create", *location, "--workload", args.name, f"--tpu-type={args.accelerator_type}",
        f"--num-slices={args.num_slices}", "--docker-image", args.image, "--command", command]))]
    if args.teardown:
        steps.append(Step("delete the workload", shlex.join(
            ["xpk", "workload", "delete", *location, "--workload", args.name]), always=True))
    return steps


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    for mode in ("jobset", "xpk"):
        sub = modes.add_parser(mode)
        sub.add_argument("--name", required=True, help="JobSet / workload name")
        sub.add_argument("--accelerator-type", required=True, help="e.g. v5litepod-16, v4-32, v5p-64, v6e-16")
        sub.add_argument("--image", required=True, help="container image with rlreason and jax[tpu] installed")
        sub.add_argument("--mount-path", default="", help="where the bucket is mounted in every pod "
                         + ("(default with --bucket: /gcs)" if mode == "jobset" else
                            "(a storage attached with xpk storage attach --auto-mount=true)"))
        sub.add_argument("--teardown", action="store_true", help="delete the workload at the end")
        sub.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
        if mode == "jobset":
            sub.add_argument("--bucket", default="", help="a GCS bucket to mount in every pod (gcsfuse CSI driver)")
            sub.add_argument("--service-account", default="default",
                             help="the pods' Kubernetes service account, with access to --bucket")
            sub.add_argument("--manifest", default="", help="where to write the manifest (default: NAME-jobset.yaml)")
            sub.add_argument("--log-dir", default="", help="where the pods' logs land (default: logs/NAME)")
        else:
            sub.add_argument("--num-slices", type=int, default=1, help="slices joined over the data-centre network")
            sub.add_argument("--cluster", required=True)
            sub.add_argument("--zone", required=True)
            sub.add_argument("--project", default="")
        sub.add_argument("config", help="a config file under configs/ (the image holds them)")
        sub.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    if args.mode == "jobset":
        args.manifest = args.manifest or f"{args.name}-jobset.yaml"
        args.log_dir = args.log_dir or f"logs/{args.name}"
        args.mount_path = args.mount_path or ("/gcs" if args.bucket else "")
        args.num_slices = 1
        if args.mount_path and not args.bucket:
            raise LaunchError("--mount-path needs --bucket: the JobSet mounts that bucket there")
    return args


def image_config(config: str) -> str:
    """`config` as the image names it (relative to its /rlreason): a file under configs/, which the image holds."""
    path = Path(config).absolute()
    if not path.is_relative_to(IMAGE_CONFIGS):
        raise LaunchError(f"config file {config!r} lies outside {IMAGE_CONFIGS}, and the image (launch/"
                          f"Dockerfile.tpu) holds configs/ only; put it there and rebuild the image")
    return str(path.relative_to(REPO))


def check_storage(cfg, args: argparse.Namespace) -> None:
    """train.out_dir outlives the pods, and every input is in a bucket (mounted, or gs:// for train.model_dir)."""
    mounts = [args.mount_path] if args.mount_path else []
    flag = "--bucket" if args.mode == "jobset" else "--mount-path of a storage attached with xpk storage attach"
    check_outputs(cfg, mounts, flag)
    unreachable = worker_inputs(cfg, mounts)
    if unreachable:
        key, location = unreachable[0]
        raise ConfigError(f"config key '{key}' is {location!r}, which the image (code and configs only) does not "
                          f"hold; put it in a bucket and set {key} to its path under the mount"
                          f"{' ' + repr(args.mount_path) if args.mount_path else ' (' + flag + ')'}"
                          + (" or to its gs:// URL" if key == "train.model_dir" else ""))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    accelerator = tpu_slice(args.accelerator_type)
    args.config = image_config(args.config)
    os.chdir(REPO)
    cfg = load_config(args.config, [*args.overrides, *CLUSTER])
    chips = accelerator.chips * args.num_slices
    slices = f"{args.num_slices} x " if args.num_slices > 1 else ""
    checked = check_run(cfg, Devices(chips, accelerator.hbm_bytes, slices + accelerator.description),
                        readable=lambda location: False)
    check_storage(cfg, args)
    report(checked)
    return run_or_print(jobset_steps(args) if args.mode == "jobset" else xpk_steps(args), args.dry_run)


if __name__ == "__main__":
    sys.exit(guarded(main, sys.argv[1:]))
