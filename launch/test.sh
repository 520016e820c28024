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
exec "$root/.venv/bin/python" -m pytest -n "${RLREASON_TEST_WORKERS:-2}" --dist loadfile "$@"
