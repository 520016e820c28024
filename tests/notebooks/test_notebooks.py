"""Every notebook's code runs top to bottom on a real run directory."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tiny_run import tiny_config
from rlreason.train.loop import train

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def run_dir(tiny_base_model, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("run")
    train(tiny_config(f"train.model_dir={tiny_base_model}", f"train.out_dir={out_dir}", "train.steps=3",
                      "train.sample_every=1"), show_progress=False)
    return out_dir


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(notebook, run_dir, tmp_path):
    cells = nbformat.read(notebook, as_version=4).cells
    script = tmp_path / "notebook.py"
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" +
                      "\n\n".join(cell.source for cell in cells if cell.cell_type == "code"))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=notebook.parent, env={**os.environ, "RLREASON_RUN_DIR": str(run_dir)})
    assert result.returncode == 0, result.stderr
    assert "3 steps" in result.stdout
