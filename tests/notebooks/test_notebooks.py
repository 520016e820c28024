"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient) on CPU with tiny settings, and shows
what it is for: its figures (PNG outputs) and its key printed lines."""

import base64
from pathlib import Path

import jax
import nbclient
import nbformat
import pytest

from rlreason.train.loop import train
from tiny_run import tiny_config

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
# Notebook -> a line its outputs must contain.
EXPECTED_TEXT = {
    "training_dynamics.ipynb": "3 steps of each of grpo, dr_grpo, grpo, shuffled rewards",
    "sharding_explorer.ipynb": "MiB per device",
    "evaluate_checkpoint.ipynb": "8 problems x 8 samples",
}


def test_every_notebook_is_checked():
    assert sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED_TEXT)


@pytest.fixture(scope="module")
def run_dir(tiny_base_model, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("run")
    train(tiny_config(f"train.model_dir={tiny_base_model}", f"train.out_dir={out_dir}", "train.steps=3",
                      "train.sample_every=1"), show_progress=False)
    return out_dir


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            assert cell.cell_type != "code" or (not cell.outputs and cell.execution_count is None), path.name


@pytest.mark.parametrize("name", sorted(EXPECTED_TEXT))
def test_notebook_runs(name, run_dir, monkeypatch):
    monkeypatch.setenv("RLREASON_RUN_DIR", str(run_dir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("RLREASON_COMPARE_STEPS", "3")  # training_dynamics' two loss types: tiny runs
    # The kernel shares the tests' compilation cache (conftest.py): the notebooks' runs compile what the run_dir
    # fixture compiled.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                       str(jax.config.jax_persistent_cache_min_compile_time_secs))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert EXPECTED_TEXT[name] in text
    images = [base64.b64decode(output["data"]["image/png"]) for output in outputs
              if "image/png" in output.get("data", {})]
    assert images, f"{name} showed no figure"
    assert all(image.startswith(b"\x89PNG") and len(image) > 5000 for image in images)
