#!/usr/bin/env bash
# The main job on a laptop CPU: sets up .venv if needed, then pretrains a tiny base model, evaluates it,
# runs GRPO with rule-based rewards, evaluates again and writes runs/demo/{summary.json,report.md,plots/*.png}.
# Extra arguments are passed on, e.g. `bash launch/demo.sh --out runs/other train.steps=50`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/setup.sh"
cd "$root"
exec "$root/.venv/bin/rlreason" demo configs/demo_cpu.yaml "$@"
