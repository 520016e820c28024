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
# The tests' models are tiny, so compiling is most of their time: LLVM without its optimisation passes compiles
# the suite's programs about a fifth faster (the matmuls run in XLA's library kernels either way). Every
# comparison in the suite is between programs built the same way, and none times anything.
export XLA_FLAGS="--xla_backend_optimization_level=0${XLA_FLAGS:+ $XLA_FLAGS}"
exec "$root/.venv/bin/python" -m pytest -n "${RLREASON_TEST_WORKERS:-2}" --dist loadfile "$@"
