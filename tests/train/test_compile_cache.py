"""A restarted run loads its programs from the persistent compilation cache: with the step scored on tokens
(grpo.scoring=jax) a resumed `rlreason train` compiles nothing; with the host-callback verifiers it must compile
the step again (JAX does not cache programs holding callbacks), which is why the token scoring path exists."""

import re
import subprocess
import sys

import pytest

from tiny_run import TINY_OVERRIDES

PROGRAMS = re.compile(r"XLA programs: (\d+) compiled, (\d+) loaded from the compilation cache")


def train(model_dir, out_dir, cache_dir, steps: int, scoring: str) -> tuple[int, int]:
    """Runs `rlreason train` in a fresh process; returns its (compiled, loaded) program counts."""
    result = subprocess.run(
        [sys.executable, "-m", "rlreason", "train", "--quiet", "configs/demo_cpu.yaml", *TINY_OVERRIDES,
         f"train.model_dir={model_dir}", f"train.out_dir={out_dir}", f"train.steps={steps}",
         f"train.compilation_cache_dir={cache_dir}", f"grpo.scoring={scoring}", "train.report_to=[]"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled, loaded = PROGRAMS.search(result.stdout).groups()
    return int(compiled), int(loaded)


# The callback case says what JAX does not cache (a program holding a host callback); the feature, a warm restart
# compiling nothing, is the jax case.
@pytest.mark.parametrize("scoring", ["jax", pytest.param("callback", marks=pytest.mark.slow)])
def test_a_resumed_run_loads_its_programs(tiny_base_model, tmp_path, scoring):
    out_dir, cache_dir = tmp_path / "run", tmp_path / "xla"
    compiled, loaded = train(tiny_base_model, out_dir, cache_dir, steps=1, scoring=scoring)
    assert compiled > 0 and loaded == 0  # a cold cache
    compiled, loaded = train(tiny_base_model, out_dir, cache_dir, steps=2, scoring=scoring)  # resumes at step 1
    assert loaded > 0
    # The step holds the host callback unless scored on tokens: exactly that one program is compiled again.
    assert compiled == (0 if scoring == "jax" else 1)
