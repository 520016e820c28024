"""Train on a Cloud TPU VM slice: check the run, create (or reuse) the slice, copy the code and the run's local
inputs, set up every worker, run `rlreason train CONFIG key=value...` on all workers at once, collect each
worker's log and the run's results, and optionally delete the slice.

    python launch/tpu_vm.py --name rl-v5p --zone us-east5-a --accelerator-type v5p-64 --teardown --dry-run \\
        configs/tpu_v5p_64.yaml train.model_dir=gs://BUCKET/models/qwen2.5-1.5b train.out_dir=gs://BUCKET/rl-v5p

Before anything is created, the config is loaded and checked as training checks it (launch/checks.py): unknown
keys, the mesh against the slice's chips, the training state against their memory, the model directory and
data files. Every worker runs the same command with distributed.mode=cluster: JAX reads the coordinator, the
process count and each worker's id from the TPU metadata server.

Where things live: CONFIG must be committed in this repository (the workers get the committed HEAD, or
--git-url/--git-ref). train.out_dir (and checkpoint.dir) must outlive the workers: a gs:// URL, or a path under a
shared file system that is mounted on every worker (--mount DIR; e.g. Filestore, or a gcsfuse mount: see
docs/parallel.md for gcsfuse's non-atomic renames). The model directory, tokenizer and data files are copied
to every worker at the same path relative to the checkout, unless they are gs:// (train.model_dir only) or under
a --mount. After training (or its failure) the run's metrics, samples, config and model are fetched into
--results-dir, before --teardown deletes the slice. `--dry-run` prints the exact commands instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from checks import (REPO, Devices, check_outputs, check_run, guarded, on_mount, report, shipped_config,
                    worker_inputs)
from steps import Step, run_or_print, train_command
from tpu_slices import tpu_slice

from rlreason.config import Config, ConfigError, load_config
from rlreason.storage import is_url

REMOTE_DIR = "~/rlreason"
CLUSTER = ["distributed.mode=cluster"]  # JAX reads the coordinator, process count and ids from the TPU metadata
RESULTS = ("metrics.jsonl", "samples.jsonl", "config.yaml", "model")  # what is fetched (checkpoints stay)
REMOTE_LOG = "rlreason-train.log"  # in the home directory, where ssh commands and scp paths start
# The TPU images ship Python 3.10 and rlreason needs 3.11: uv fetches a managed 3.11 into the venv.
DEFAULT_SETUP = ("cd ~/rlreason && (command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh) "
                 "&& ~/.local/bin/uv venv --python 3.11 .venv "
                 "&& ~/.local/bin/uv pip install --python .venv/bin/python -e \".[gcs]\" \"jax[tpu]>=0.10.2,<0.12\"")


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


def remote_path(location: str) -> str:
    """Where a worker keeps a copy of the input at `location` (relative to this checkout's root): the same path
    relative to its own checkout in ~/rlreason, given relative to the home directory as scp takes it."""
    remote = os.path.normpath(os.path.join("rlreason", location))
    if os.path.isabs(location) or remote.startswith(".."):
        raise ConfigError(f"{location!r} is neither inside this checkout nor beside it, so it has no place on the "
                          f"workers; give a path relative to the repository root (e.g. ../shared/data/...), a "
                          f"gs:// URL for train.model_dir, or a path under --mount")
    return remote


def input_steps(args: argparse.Namespace, inputs: list[tuple[str, str]]) -> list[Step]:
    """Copies each input the workers need (a file or a folder) to every worker, at its place there."""
    if not inputs:
        return []
    targets = [(location, remote_path(location)) for _, location in inputs]
    folders = " ".join(f"~/{shlex.quote(folder)}" for folder in dict.fromkeys(os.path.dirname(remote)
                                                                             for _, remote in targets))
    copies = [shlex.join(_gcloud(args, "tpu-vm", "scp", "--recurse", os.path.normpath(REPO / location),
                                 f"{args.name}:{os.path.dirname(remote)}/", "--worker=all"))
              for location, remote in targets]
    keys = ", ".join(key for key, _ in inputs)
    return [Step(f"copy the run's inputs ({keys}) to every worker",
                 "\n".join([_on_all_workers(args, f"mkdir -p {folders}"), *copies]))]


def results_steps(args: argparse.Namespace, out_dir: str) -> list[Step]:
    """Fetches the run's results (not its checkpoints) from train.out_dir into --results-dir, also after a
    failure, so that they are here before --teardown deletes the slice."""
    local = shlex.quote(args.results_dir)
    if is_url(out_dir):
        fetch = shlex.join(["gcloud", "storage", "cp", "--recursive",
                            *(f"{out_dir.rstrip('/')}/{name}" for name in RESULTS), args.results_dir])
    else:
        fetch = shlex.join(_gcloud(args, "tpu-vm", "scp", "--recurse",
                                   *(f"{args.name}:{os.path.join(out_dir, name)}" for name in RESULTS),
                                   args.results_dir, "--worker=0"))
    return [Step(f"fetch the run's metrics, samples, config and model from {out_dir} into {args.results_dir}",
                 f"mkdir -p {local} && {fetch}", always=True)]


def launch_steps(args: argparse.Namespace, cfg: Config) -> list[Step]:
    accelerator = tpu_slice(args.accelerator_type)
    train = shlex.join(train_command(args.config, args.overrides, CLUSTER))
    run = (f"set -o pipefail; cd {REMOTE_DIR} && source .venv/bin/activate && "
           f"PYTHONUNBUFFERED=1 {train} 2>&1 | tee ~/{REMOTE_LOG}")
    collect = [f"mkdir -p {shlex.quote(args.log_dir)}"] + [
        shlex.join(_gcloud(args, "tpu-vm", "scp", f"{args.name}:{REMOTE_LOG}",
                           f"{args.log_dir}/worker-{worker}.log", f"--worker={worker}"))
        for worker in range(accelerator.workers)]
    steps = [*create_steps(args), *code_steps(args), *input_steps(args, worker_inputs(cfg, args.mount)),
             Step("set up Python and rlreason on every worker", _on_all_workers(args, args.setup_command)),
             Step(f"train on all {accelerator.workers} workers at once", _on_all_workers(args, run)),
             Step(f"collect the {accelerator.workers} workers' logs into {args.log_dir}", "\n".join(collect),
                  always=True),
             *results_steps(args, cfg.train.out_dir)]
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
    parser.add_argument("--accelerator-type", required=True, help="e.g. v5litepod-16, v4-32, v5p-64, v6e-16")
    parser.add_argument("--version", default="", help="TPU VM runtime version (default: the type's usual one)")
    parser.add_argument("--queued", action="store_true", help="request the slice as a queued resource")
    parser.add_argument("--spot", action="store_true", help="preemptible (spot) capacity")
    parser.add_argument("--reuse", action="store_true", help="the slice exists already: skip creating it")
    parser.add_argument("--git-url", default="", help="clone this repository on the workers instead of copying HEAD")
    parser.add_argument("--git-ref", default="main", help="branch or tag for --git-url")
    parser.add_argument("--setup-command", default=DEFAULT_SETUP, help="run in ~ on every worker after the copy")
    parser.add_argument("--mount", action="append", default=[], metavar="DIR",
                        help="a shared file system mounted at DIR on every worker (Filestore, NFS, gcsfuse); "
                             "train.out_dir and inputs may lie under it. Repeatable")
    parser.add_argument("--log-dir", default="", help="where the workers' logs land (default: logs/NAME)")
    parser.add_argument("--results-dir", default="", help="where the run's results land (default: runs/NAME)")
    parser.add_argument("--teardown", action="store_true", help="delete the slice at the end, even after a failure")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("config", help="a committed config file of this repository, e.g. configs/tpu_v5p_64.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    args.log_dir = args.log_dir or f"logs/{args.name}"
    args.results_dir = args.results_dir or f"runs/{args.name}"
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    accelerator = tpu_slice(args.accelerator_type)
    args.config = shipped_config(args.config, committed=not args.git_url)
    os.chdir(REPO)  # relative paths in the config name the same files here as in each worker's checkout
    cfg = load_config(args.config, [*args.overrides, *CLUSTER])
    checked = check_run(cfg, Devices(accelerator.chips, accelerator.hbm_bytes, accelerator.description),
                        readable=lambda location: not on_mount(location, args.mount))
    check_outputs(cfg, args.mount, "--mount DIR")
    report(checked)
    return run_or_print(launch_steps(args, cfg), args.dry_run)


if __name__ == "__main__":
    sys.exit(guarded(main, sys.argv[1:]))
