"""gs:// locations survive the path handling of checkpoints, model directories and run outputs: they keep their
scheme and never become folders under the working directory. An in-memory fsspec file system registered for
gs:// stands in for Cloud Storage where files are read and written (the arrays go through tensorstore, which
has no such stand-in; the local tests of checkpoints and model directories cover them through the same code)."""

from __future__ import annotations

import importlib

import pytest
import yaml
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem
from tiny_run import tiny_config

from rlreason.config import from_dict, save_config, to_dict
from rlreason.models.store import load_model_config, load_model_tokenizer
from rlreason.storage import is_url, storage_path
from rlreason.tokenizers import load_tokenizer
from rlreason.train.checkpoint import checkpoint_dir
from rlreason.train.loop import RunLog

fsspec_registry = importlib.import_module("fsspec.registry")  # the module; `fsspec.registry` is its mapping


class FakeGcs(MemoryFileSystem):
    """Cloud Storage as etils.epath reaches it (fsspec's "gs"/"gcs" protocol), held in memory."""

    protocol = ("gs", "gcs")
    root_marker = ""
    store: dict = {}
    pseudo_dirs = [""]


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
    """gs:// served from memory for the test; the working directory is an empty folder, to show that nothing
    lands there."""
    FakeGcs.store.clear()
    FakeGcs.pseudo_dirs[:] = [""]
    FakeGcs.clear_instance_cache()
    for protocol in FakeGcs.protocol:  # undone after the test, so real gs:// access is left as it was
        monkeypatch.setitem(fsspec_registry._registry, protocol, FakeGcs)
    monkeypatch.chdir(tmp_path)
    yield FakeGcs.store
    FakeGcs.clear_instance_cache()
    assert list(tmp_path.iterdir()) == [], "a gs:// path was written to the local working directory"


@pytest.mark.parametrize("location", ["gs://bkt/runs/rl", "s3://bkt/runs/rl"])
def test_a_url_keeps_its_scheme(location, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = storage_path(location)
    assert is_url(path) and str(path) == location and str(path / "checkpoints") == location + "/checkpoints"
    assert list(tmp_path.iterdir()) == []


def test_a_local_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not is_url("runs/rl") and str(storage_path("runs/rl")) == str(tmp_path / "runs" / "rl")


def test_the_checkpoint_directory_of_a_bucket_run_stays_in_the_bucket(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(checkpoint_dir(tiny_config("train.out_dir=gs://bkt/runs/rl"))) == "gs://bkt/runs/rl/checkpoints"
    assert str(checkpoint_dir(tiny_config("checkpoint.dir=gs://bkt/ckpt"))) == "gs://bkt/ckpt"
    assert str(checkpoint_dir(tiny_config("train.out_dir=runs/rl"))) == str(tmp_path / "runs/rl/checkpoints")


def test_a_model_directory_in_a_bucket_gives_its_config_and_tokenizer(fake_gcs, tiny_base_model):
    """The small files of a model directory (model.yaml, the tokenizer) read from gs:// as from a local folder."""
    bucket_dir = epath.Path("gs://bkt/models/base")
    for file in epath.Path(tiny_base_model).iterdir():
        if file.is_file():
            (bucket_dir / file.name).write_bytes(file.read_bytes())
    assert set(fake_gcs) >= {"gs://bkt/models/base/model.yaml"}
    model_cfg, tokenizer_file = load_model_config("gs://bkt/models/base")
    assert (model_cfg, tokenizer_file) == load_model_config(tiny_base_model)
    tokenizer = load_model_tokenizer("gs://bkt/models/base", tokenizer_file)
    local = load_tokenizer(epath.Path(tiny_base_model) / tokenizer_file)
    text = "<think>12 + 30 = 42</think> <answer>42</answer>"
    assert tokenizer.encode(text) == local.encode(text) and tokenizer.vocab_size == local.vocab_size


def test_a_runs_config_and_logs_are_written_to_the_bucket(fake_gcs):
    """train's config.yaml, metrics.jsonl and samples.jsonl, through the same calls train makes."""
    out_dir = storage_path("gs://bkt/runs/rl")
    cfg = tiny_config("train.out_dir=gs://bkt/runs/rl", "train.report_to=[]")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    log = RunLog(cfg, out_dir, enabled=True, resumed_step=None)
    log.write_metrics({"step": 1, "reward": 0.5})
    log.write_metrics({"step": 2, "reward": 0.75})
    log.close()
    assert fake_gcs["gs://bkt/runs/rl/metrics.jsonl"].getvalue() == (b'{"step": 1, "reward": 0.5}\n'
                                                                     b'{"step": 2, "reward": 0.75}\n')
    assert (out_dir / "samples.jsonl").read_text() == ""
    saved = epath.Path("gs://bkt/runs/rl/config.yaml").read_text()
    assert to_dict(from_dict(yaml.safe_load(saved))) == to_dict(cfg)
    # A resume from step 1 keeps step 1's row and replaces the file in the bucket.
    resumed = RunLog(cfg, out_dir, enabled=True, resumed_step=1)
    resumed.close()
    assert [row["step"] for row in resumed.history] == [1]
    assert (out_dir / "metrics.jsonl").read_text() == '{"step": 1, "reward": 0.5}\n'

