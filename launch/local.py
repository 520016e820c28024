"""Run N processes on this machine as one multi-process JAX job: the CPU stand-in for a multi-host slice.

    rlreason pretrain configs/cpu_8dev.yaml --out runs/cpu_8dev/base    # the base model the config starts from
    python launch/local.py --num-processes 2 --devices-per-process 4 configs/cpu_8dev.yaml train.steps=10

Before any process starts, the config (with the launcher's overrides) is loaded and checked as training checks
it (launch/checks.py): unknown keys, the mesh against the N x D devices, the batch split, the model directory
and the data. A failed check prints one line and exits with code 2.

Process i runs `python -m rlreason train CONFIG key=value...` (or --program instead of `rlreason train`) with
distributed.mode=manual, distributed.coordinator_address=127.0.0.1:PORT, distributed.num_processes=N,
distributed.process_id=i, distributed.local_device_count=D and distributed.heartbeat_timeout_s appended, and
JAX_PLATFORMS=cpu. Every output line is prefixed with [pI]. When a process fails the others are stopped and
the launcher exits with its code; after --timeout seconds all are stopped and it exits with 124.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

from checks import Devices, check_run, guarded, report
from steps import Step, render, train_command

from rlreason.config import load_config

TIMEOUT_EXIT_CODE = 124
STOP_GRACE_S = 5.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_commands(args: argparse.Namespace, port: int) -> list[list[str]]:
    """The argv of each process."""
    program = shlex.split(args.program) if args.program else [sys.executable, "-m", "rlreason", "train"]
    return [train_command(args.config, args.overrides, distributed_overrides(args, port, process_id), program)
            for process_id in range(args.num_processes)]


def distributed_overrides(args: argparse.Namespace, port: int, process_id: int) -> list[str]:
    return ["distributed.mode=manual", f"distributed.coordinator_address=127.0.0.1:{port}",
            f"distributed.num_processes={args.num_processes}", f"distributed.process_id={process_id}",
            f"distributed.local_device_count={args.devices_per_process}",
            f"distributed.heartbeat_timeout_s={args.heartbeat_timeout}"]


def _stream(process: subprocess.Popen, prefix: str) -> None:
    for line in process.stdout:
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to every live process group, SIGKILL to those still alive after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
            time.sleep(0.05)


def run_processes(commands: list[list[str]], timeout_s: float) -> int:
    """Starts every command at once; 0 when all succeed, else the first failure's code (124 on timeout)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                  start_new_session=True) for command in commands]
    streams = [threading.Thread(target=_stream, args=(process, f"[p{index}]"), daemon=True)
               for index, process in enumerate(processes)]
    for stream in streams:
        stream.start()
    deadline = time.monotonic() + timeout_s
    code = 0
    while code == 0 and any(process.poll() is None for process in processes):
        failed = [process.returncode for process in processes if process.poll() not in (None, 0)]
        if failed:
            code = failed[0]
        elif time.monotonic() > deadline:
            print(f"[launch] timed out after {timeout_s:.0f} s", file=sys.stderr)
            code = TIMEOUT_EXIT_CODE
        else:
            time.sleep(0.1)
    if code == 0:
        code = next((process.returncode for process in processes if process.returncode), 0)
    if code:
        _stop(processes)
        print(f"[launch] failed with exit code {code}; every process is stopped", file=sys.stderr)
    for stream in streams:
        stream.join()
    return code


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--devices-per-process", type=int, required=True, help="simulated CPU devices each")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before every process is stopped")
    parser.add_argument("--heartbeat-timeout", type=int, default=10,
                        help="seconds of silence after which JAX declares a peer dead")
    parser.add_argument("--program", default="", help='what runs instead of "python -m rlreason train"')
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("config", help="a config file")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    port = args.port or free_port()
    cfg = load_config(args.config, [*args.overrides, *distributed_overrides(args, port, 0)])
    devices = args.num_processes * args.devices_per_process
    report(check_run(cfg, Devices(devices, 0, f"{args.num_processes} processes x {args.devices_per_process} CPU "
                                              f"devices = {devices} devices"), trains=not args.program))
    commands = process_commands(args, port)
    if args.dry_run:
        steps = [Step(f"process {index} of {len(commands)}", f"JAX_PLATFORMS=cpu {shlex.join(command)} &")
                 for index, command in enumerate(commands)]
        print(render([*steps, Step("wait for all of them", "wait")]))
        return 0
    return run_processes(commands, args.timeout)


if __name__ == "__main__":
    sys.exit(guarded(main, sys.argv[1:]))
