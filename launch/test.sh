#!/usr/bin/env bash
# The whole default test suite (slow tests excluded: add `-m slow` or `-m ""` to run them), after setting up
# .venv if needed. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/setup.sh"
cd "$root"
export HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu
exec "$root/.venv/bin/python" -m pytest "$@"
