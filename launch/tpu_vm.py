"""Train on a Cloud TPU VM slice: create (or reuse) it, copy the code, set up every worker, run
`rlreason train CONFIG key=value...` on all workers at once, collect each worker's log, optionally delete it.

    python launch/tpu_vm.py --name rl-v5e --zone us-west4-a --accelerator-type v5litepod-16 \\
        --teardown --dry-run configs/tpu_v5p_64.yaml train.steps=100

Every worker runs the same command with distributed.mode=cluster: JAX reads the coordinator, the process
count and each worker's id from the TPU metadata server. CONFIG must be a path inside this repository (the
workers get the committed HEAD, or --git-url/--git-ref). `--dry-run` prints the exact commands instead.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from steps import Step, run_or_print, train_command
from tpu_slices import tpu_slice

REPO = Path(__file__).resolve().parents[1]
REMOTE_DIR = "~/rlreason"
REMOTE_LOG = "rlreason-train.log"  # in the home directory, where ssh commands and scp paths start
# The TPU images ship Python 3.10 and rlreason needs 3.11: uv fetches a managed 3.11 into the venv.
DEFAULT_SETUP = ("cd ~/rlreason && (command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh) "
                 "&& ~/.local/bin/uv venv --python 3.11 .venv "
                 "&& ~/.local/bin/uv pip install --python .venv/bin/python -e . \"jax[tpu]>=0.10.2,<0.12\"")


def _gcloud(args: argparse.Namespace, *command: str) -> list[str]:
    """A gcloud command with the zone (and project) every call needs."""
    location = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
    return ["gcloud", "compute", "tpus", *command, *location]


def _on_all_workers(args: argparse.Namespace, remote_command: str) -> str:
    return shlex.join(_gcloud(args, "tpu-vm", "ssh", args.name, "--worker=all", "--command", remote_command))


def create_steps(args: argparse.Namespace) -> list[Step]:
    if args.reuse:
        return []
    accelerator = tpu_slice(args.accelerator_type)
    version = args.version or accelerator.runtime_version
    spot = ["--spot"] if args.spot else []
    shape = f"{args.accelerator_type}: {accelerator.workers} workers x {accelerator.chips_per_worker} chips"
    if not args.queued:
        return [Step(f"create the TPU VM slice ({shape})", shlex.join(_gcloud(
            args, "tpu-vm", "create", args.name, f"--accelerator-type={args.accelerator_type}",
            f"--version={version}", *spot)))]
    describe = shlex.join(_gcloud(args, "queued-resources", "describe", args.name, "--format=value(state.state)"))
    return [Step(f"queue a request for the TPU slice ({shape})", shlex.join(_gcloud(
                args, "queued-resources", "create", args.name, f"--node-id={args.name}",
                f"--accelerator-type={args.accelerator_type}", f"--runtime-version={version}", *spot))),
            Step("wait until the queued slice is ACTIVE",
                 f'until [ "$({describe})" = ACTIVE ]; do sleep 30; done')]


def code_steps(args: argparse.Namespace) -> list[Step]:
    if args.git_url:
        clone = shlex.join(["git", "clone", "--depth=1", f"--branch={args.git_ref}", args.git_url, "rlreason"])
        return [Step("clone the code on every worker", _on_all_workers(args, f"rm -rf {REMOTE_DIR} && cd ~ && {clone}"))]
    archive = f"/tmp/rlreason-{args.name}.tar.gz"
    return [
        Step("pack the committed HEAD of this checkout", shlex.join(
            ["git", "-C", str(REPO), "archive", "--format=tar.gz", "--prefix=rlreason/", "-o", archive, "HEAD"])),
        Step("copy it to every worker", shlex.join(_gcloud(
            args, "tpu-vm", "scp", archive, f"{args.name}:rlreason.tar.gz", "--worker=all"))),
        Step("unpack it on every worker",
             _on_all_workers(args, f"rm -rf {REMOTE_DIR} && tar -xzf ~/rlreason.tar.gz -C ~")),
    ]


def launch_steps(args: argparse.Namespace) -> list[Step]:
    accelerator = tpu_slice(args.accelerator_type)
    train = shlex.join(train_command(args.config, args.overrides, ["distributed.mode=cluster"]))
    run = (f"set -o pipefail; cd {REMOTE_DIR} && source .venv/bin/activate && "
           f"PYTHONUNBUFFERED=1 {train} 2>&1 | tee ~/{REMOTE_LOG}")
    collect = [f"mkdir -p {shlex.quote(args.log_dir)}"] + [
        shlex.join(_gcloud(args, "tpu-vm", "scp", f"{args.name}:{REMOTE_LOG}",
                           f"{args.log_dir}/worker-{worker}.log", f"--worker={worker}"))
        for worker in range(accelerator.workers)]
    steps = [*create_steps(args), *code_steps(args),
             Step("set up Python and rlreason on every worker", _on_all_workers(args, args.setup_command)),
             Step(f"train on all {accelerator.workers} workers at once", _on_all_workers(args, run)),
             Step(f"collect the {accelerator.workers} workers' logs into {args.log_dir}", "\n".join(collect),
                  always=True)]
    if args.teardown:
        delete = (_gcloud(args, "queued-resources", "delete", args.name, "--force", "--quiet") if args.queued
                  else _gcloud(args, "tpu-vm", "delete", args.name, "--quiet"))
        steps.append(Step("delete the slice", shlex.join(delete), always=True))
    return steps


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default="", help="default: gcloud's configured project")
    parser.add_argument("--accelerator-type", required=True, help="e.g. v5litepod-16, v4-32, v5p-64")
    parser.add_argument("--version", default="", help="TPU VM runtime version (default: the type's usual one)")
    parser.add_argument("--queued", action="store_true", help="request the slice as a queued resource")
    parser.add_argument("--spot", action="store_true", help="preemptible (spot) capacity")
    parser.add_argument("--reuse", action="store_true", help="the slice exists already: skip creating it")
    parser.add_argument("--git-url", default="", help="clone this repository on the workers instead of copying HEAD")
    parser.add_argument("--git-ref", default="main", help="branch or tag for --git-url")
    parser.add_argument("--setup-command", default=DEFAULT_SETUP, help="run in ~ on every worker after the copy")
    parser.add_argument("--log-dir", default="", help="where the workers' logs land (default: logs/NAME)")
    parser.add_argument("--teardown", action="store_true", help="delete the slice at the end, even after a failure")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("config", help="a config file inside this repository, e.g. configs/tpu_v5p_64.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    args.log_dir = args.log_dir or f"logs/{args.name}"
    return args


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    sys.exit(run_or_print(launch_steps(arguments), arguments.dry_run))
