#!/usr/bin/env bash
# The whole default test suite (slow tests excluded: add `-m slow` or `-m ""` to run them), after setting up
# .venv if needed. Extra arguments go to pytest. The files are shared among RLREASON_TEST_WORKERS pytest
# processes (default 2, CI's core count): one process through the whole suite accumulated enough XLA state to
# crash late in the run, and compiling in two processes halves the wall time on two cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu
# The tests' models are tiny, so compiling is most of their time: XLA's older loop emitters, without LLVM's
# optimisation passes, compile a tiny GRPO step in 1.1 s instead of 6.6 s and take the suite from 29 to 14.5
# minutes (the matmuls run in XLA's library kernels either way; the programs run a little slower). Every
# comparison in the suite is between programs built the same way, and no test times anything. Runs and
# benchmarks keep XLA's defaults.
export XLA_FLAGS="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false${XLA_FLAGS:+ $XLA_FLAGS}"
exec "$root/.venv/bin/python" -m pytest -n "${RLREASON_TEST_WORKERS:-2}" --dist loadfile "$@"
