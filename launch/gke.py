"""Train on TPU slices in a GKE cluster, either as a JobSet manifest applied with kubectl or through xpk.

    python launch/gke.py jobset --name rl-v5e --accelerator-type v5litepod-16 --image IMAGE \\
        --dry-run configs/tpu_v5p_64.yaml train.steps=100
    python launch/gke.py xpk --name rl-v5e --cluster CLUSTER --zone us-west4-a --accelerator-type v5litepod-16 \\
        --image IMAGE --dry-run configs/tpu_v5p_64.yaml

The JobSet runs one pod per TPU VM of the slice (an indexed Job). GKE gives every pod its worker id and the
slice's hostnames, so `rlreason train ... distributed.mode=cluster` finds the coordinator by itself. Several
slices (--num-slices) go through xpk, which also sets the MEGASCALE_* variables that join slices. IMAGE must
contain rlreason installed with jax[tpu], e.g. built from launch/Dockerfile.tpu.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from steps import Step, run_or_print, train_command
from tpu_slices import TpuSlice, tpu_slice

TPU_PORTS = (8471, 8080)  # the TPU runtime's ports, as in GKE's multi-host TPU examples


def jobset_manifest(name: str, accelerator: TpuSlice, image: str, command: list[str]) -> str:
    """A JobSet of one indexed Job of `accelerator.workers` pods, each pod holding one TPU VM's chips."""
    ports = "\n".join(f"                - containerPort: {port}" for port in TPU_PORTS)
    return f"""apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: {name}
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
          template:
            spec:
              restartPolicy: Never
              hostNetwork: true
              dnsPolicy: ClusterFirstWithHostNet
              nodeSelector:
                cloud.google.com/gke-tpu-accelerator: {accelerator.gke_accelerator}
                cloud.google.com/gke-tpu-topology: {accelerator.topology}
              containers:
              - name: rlreason
                image: {image}
                command: {_yaml_list(["bash", "-c", f"PYTHONUNBUFFERED=1 {shlex.join(command)}"])}
                ports:
{ports}
                securityContext:
                  privileged: true
                resources:
                  limits:
                    google.com/tpu: {accelerator.chips_per_worker}
"""


def _yaml_list(items: list[str]) -> str:
    """A flow-style YAML list of strings (JSON strings are valid YAML)."""
    return json.dumps(items)


def jobset_steps(args: argparse.Namespace) -> list[Step]:
    accelerator = tpu_slice(args.accelerator_type)
    command = train_command(args.config, args.overrides, ["distributed.mode=cluster"])
    manifest = jobset_manifest(args.name, accelerator, args.image, command)
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
    command = shlex.join(train_command(args.config, args.overrides, ["distributed.mode=cluster"]))
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
        sub.add_argument("--accelerator-type", required=True, help="e.g. v5litepod-16, v4-32, v5p-64")
        sub.add_argument("--image", required=True, help="container image with rlreason and jax[tpu] installed")
        sub.add_argument("--teardown", action="store_true", help="delete the workload at the end")
        sub.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
        if mode == "jobset":
            sub.add_argument("--manifest", default="", help="where to write the manifest (default: NAME-jobset.yaml)")
            sub.add_argument("--log-dir", default="", help="where the pods' logs land (default: logs/NAME)")
        else:
            sub.add_argument("--num-slices", type=int, default=1, help="slices joined over the data-centre network")
            sub.add_argument("--cluster", required=True)
            sub.add_argument("--zone", required=True)
            sub.add_argument("--project", default="")
        sub.add_argument("config", help="a config file inside the image's rlreason checkout")
        sub.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    if args.mode == "jobset":
        args.manifest = args.manifest or f"{args.name}-jobset.yaml"
        args.log_dir = args.log_dir or f"logs/{args.name}"
    return args


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    steps = jobset_steps(arguments) if arguments.mode == "jobset" else xpk_steps(arguments)
    sys.exit(run_or_print(steps, arguments.dry_run))
