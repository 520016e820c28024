"""rlreason's GRPO step against TRL's and Tunix's on the peers' own workload, side by side in one run.

    bash ../shared/bench/peers/setup.sh          # once: the peers' environments (about 3 GB)
    python launch/compare_peers.py --rounds 2    # rlreason, TRL, Tunix, rlreason, TRL, Tunix, ...

Each round runs `rlreason bench configs/bench_peers.yaml` and the peers' harnesses
(../shared/bench/peers/{trl,tunix}_grpo.py) one after another, interleaved, so that machine load hits all of
them alike. Prints every run's seconds per step, the medians per framework, rlreason's ratio to each peer, and
MFU for each: the workload's model FLOPs (rlreason.train.flops, equal to the peers' jax_grpo_flops.py count) per
second over the matmul peak rlreason's bench measures in the same run. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "bench" / "peers"
sys.path.insert(0, str(ROOT))  # rlreason from this checkout, installed or not

from rlreason.huge_pages import huge_pages_environment, thp_mode  # noqa: E402

PEER_HARNESSES = {"trl": ("trl", "trl_grpo.py"), "tunix": ("tunix", "tunix_grpo.py")}


def last_json_line(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run_rlreason(config: str = "configs/bench_peers.yaml", overrides: Sequence[str] = ()) -> dict:
    """The JSON line of `rlreason bench CONFIG OVERRIDES...`, run in a fresh process."""
    result = subprocess.run([sys.executable, "-m", "rlreason", "bench", "--quiet", config, *overrides], cwd=ROOT,
                            capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if result.returncode != 0:
        raise SystemExit(f"rlreason bench {config} {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    return last_json_line(result.stdout)


def run_peer(name: str, peers_home: Path, steps: int, huge_pages: bool = False) -> dict:
    """The JSON line of the peer's harness; `huge_pages`: run it with glibc.malloc.hugetlb=1 too, as rlreason's
    command line runs itself (rlreason.huge_pages), where the machine gives huge pages on request."""
    venv, script = PEER_HARNESSES[name]
    environ = dict(os.environ, HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1")
    if huge_pages:
        environ = huge_pages_environment(environ, platform.libc_ver(), thp_mode()) or environ
    result = subprocess.run([str(peers_home / venv / "bin" / "python"), str(PEERS / script), "--steps", str(steps)],
                            capture_output=True, text=True, env=environ)
    if result.returncode != 0:
        raise SystemExit(f"the {name} harness failed:\n{result.stderr[-3000:]}")
    return last_json_line(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each runs every framework once)")
    parser.add_argument("--steps", type=int, default=10, help="steps per peer run (rlreason's bench always times 5)")
    parser.add_argument("--peers-home", default=os.environ.get("PEERS_HOME", "~/.cache/rlreason-peers"))
    parser.add_argument("--peers", default="trl,tunix", help="which peers, comma-separated")
    parser.add_argument("--peers-huge-pages", action="store_true",
                        help="run the peers with the host allocator rlreason sets for itself (glibc.malloc.hugetlb=1, "
                             "transparent huge pages; rlreason.huge_pages) instead of their default")
    args = parser.parse_args(argv)
    peers_home = Path(args.peers_home).expanduser()
    peers = [name for name in args.peers.split(",") if name]
    missing = [name for name in peers if not (peers_home / PEER_HARNESSES[name][0] / "bin" / "python").exists()]
    if missing:
        print(f"error: no environment for {', '.join(missing)} under {peers_home}: run "
              f"bash {PEERS / 'setup.sh'} first (or pass --peers-home)", file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {"rlreason": [], **{name: [] for name in peers}}
    for round_index in range(args.rounds):
        for name in runs:
            figures = (run_rlreason() if name == "rlreason"
                       else run_peer(name, peers_home, args.steps, args.peers_huge_pages))
            runs[name].append(figures)
            print(f"round {round_index + 1} {name:9s} {figures['median_step_s']:.3f} s/step  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    medians = {name: statistics.median(run["median_step_s"] for run in figures) for name, figures in runs.items()}
    step_flops = workload_flops()
    peak = statistics.median(run["peak_matmul_gflops"] for run in runs["rlreason"]) * 1e9
    summary = {"median_step_s": medians, "peak_matmul_gflops": peak / 1e9,
               "mfu": {name: step_flops / seconds / peak for name, seconds in medians.items()},
               "rlreason_over": {name: medians["rlreason"] / medians[name] for name in peers},
               "cpu": runs["rlreason"][0]["cpu"], "rounds": args.rounds,
               "host_huge_pages": {"rlreason": runs["rlreason"][0]["host_huge_pages"],
                                   "peers": args.peers_huge_pages}}
    for name, seconds in medians.items():
        ratio = "" if name == "rlreason" else f"   rlreason / {name} = {summary['rlreason_over'][name]:.2f}"
        print(f"{name:9s} median {seconds:.3f} s/step  MFU {summary['mfu'][name]:.3f}{ratio}")
    print(json.dumps(summary))
    return 0


def workload_flops() -> int:
    """Model FLOPs of one step of the peers' workload (8 x 8 completions of 64 tokens after 7-token prompts),
    the same count for every framework."""
    from rlreason.config import load_config
    from rlreason.train.flops import grpo_step_flops

    model = load_config(ROOT / "configs" / "bench_peers.yaml").model
    return grpo_step_flops(model, rows=64, prompt_length=7, completion_length=64, reference=True,
                           policy_passes=1)["total"]


if __name__ == "__main__":
    sys.exit(main())
