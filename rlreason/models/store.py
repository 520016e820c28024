"""The model directory: what `pretrain` and `convert` write and what `sample` and `train` start from.

    DIR/model.yaml   {"model": ModelConfig fields, "tokenizer": file name inside DIR}
    DIR/params/      an orbax checkpoint of the params pytree
    DIR/<tokenizer file>

Restoring with `shardings` creates every array directly on its sharding. DIR may be a gs:// URL
(rlreason.storage): orbax reads and writes the params there, and the tokenizer files pass through a local
scratch folder, since the tokenizer libraries read only local files.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import jax
import orbax.checkpoint as ocp
import yaml

from rlreason.config import MODEL_RUN_SETTINGS, ConfigError, ModelConfig, _build, to_dict
from rlreason.models.transformer import Params, param_specs
from rlreason.storage import is_url, storage_path
from rlreason.tokenizers import Tokenizer, load_tokenizer


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or does not match its config."""


def save_model(directory: str | Path, params: Params, model_cfg: ModelConfig, tokenizer: Tokenizer) -> None:
    """Writes a model directory. In a multi-process run every process calls this (orbax writes each process's
    shards); the small files are written by process 0 only."""
    directory = storage_path(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "params", params, force=True)
    if jax.process_index() == 0:
        with tempfile.TemporaryDirectory() as scratch:
            tokenizer_file = tokenizer.save_to(scratch)
            for file in Path(scratch).iterdir():
                (directory / file.name).write_bytes(file.read_bytes())
        (directory / "model.yaml").write_text(
            yaml.safe_dump({"model": to_dict(model_cfg), "tokenizer": tokenizer_file}, sort_keys=False))


def load_model_config(directory: str | Path) -> tuple[ModelConfig, str]:
    """(ModelConfig, tokenizer file name) of a model directory."""
    meta_path = storage_path(directory) / "model.yaml"
    if not meta_path.is_file():
        raise ModelDirError(f"{str(meta_path)!r} does not exist: {str(directory)!r} is not an rlreason model "
                            f"directory (make one with `rlreason pretrain` or `rlreason convert`)")
    meta = yaml.safe_load(meta_path.read_text())
    try:
        model_cfg = _build(ModelConfig, meta["model"], "model")
    except (ConfigError, KeyError, TypeError) as error:
        raise ModelDirError(f"{str(meta_path)!r} is invalid: {error}") from None
    return model_cfg, meta["tokenizer"]


def load_model_tokenizer(directory: str | os.PathLike, tokenizer_file: str) -> Tokenizer:
    """The tokenizer stored in a model directory as `tokenizer_file` (with its companion files, such as
    tokenizer_config.json); a URL directory's top-level files are copied to a local scratch folder first."""
    directory = storage_path(directory)
    if not is_url(directory):
        return load_tokenizer(directory / tokenizer_file)
    with tempfile.TemporaryDirectory() as scratch:
        for file in directory.iterdir():
            if file.is_file():
                (Path(scratch) / file.name).write_bytes(file.read_bytes())
        return load_tokenizer(Path(scratch) / tokenizer_file)


def run_model_config(stored: ModelConfig, run: ModelConfig, directory: str | Path) -> ModelConfig:
    """The model a run computes: the architecture stored in `directory`, the run-time settings
    (MODEL_RUN_SETTINGS: compute dtype, master-weight dtype, layer scan, remat) of the run's own `model` config.

    An architecture key that the run sets (to another value than its default) and that contradicts the stored
    model is a ConfigError naming both values.
    """
    default = ModelConfig()
    for field in dataclasses.fields(ModelConfig):
        given, stored_value = getattr(run, field.name), getattr(stored, field.name)
        if field.name not in MODEL_RUN_SETTINGS and given != getattr(default, field.name) and given != stored_value:
            raise ConfigError(f"config key 'model.{field.name}' is {given!r}, but the model in {str(directory)!r} has "
                              f"{stored_value!r}: a model directory fixes the architecture, so drop the key or set "
                              f"it to {stored_value!r} (only {', '.join(MODEL_RUN_SETTINGS)} are the run's to choose)")
    model = dataclasses.replace(stored, **{name: getattr(run, name) for name in MODEL_RUN_SETTINGS})
    model.validate("model")
    return model


def run_settings_only(model: ModelConfig) -> ModelConfig:
    """`model`'s run-time settings (MODEL_RUN_SETTINGS) on the default architecture: a run config for a model
    directory of any architecture (run_model_config then takes the stored one)."""
    return dataclasses.replace(ModelConfig(), **{name: getattr(model, name) for name in MODEL_RUN_SETTINGS})


def load_model(directory: str | Path, shardings=None, run: ModelConfig | None = None):
    """Returns (params, ModelConfig, Tokenizer). `shardings`: a NamedSharding per leaf, or None for default.
    `run`: the run's model config, whose run-time settings apply (run_model_config); the params are restored in
    its `param_dtype`. None: the model exactly as stored."""
    directory = storage_path(directory)
    model_cfg, tokenizer_file = load_model_config(directory)
    if run is not None:
        model_cfg = run_model_config(model_cfg, run, directory)
    specs = param_specs(model_cfg)
    is_spec = lambda node: hasattr(node, "axes")  # noqa: E731
    if shardings is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), specs,
                                 is_leaf=is_spec)
    abstract = jax.tree.map(
        lambda spec, sharding: jax.ShapeDtypeStruct(spec.shape, model_cfg.param_dtype, sharding=sharding),
        specs, shardings, is_leaf=is_spec)
    if not (directory / "params").is_dir():
        raise ModelDirError(f"{str(directory / 'params')!r} does not exist: the model directory has no weights")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(directory / "params", abstract)
    except (ValueError, FileNotFoundError, KeyError) as error:
        raise ModelDirError(f"weights in {str(directory / 'params')!r} do not match {str(directory / 'model.yaml')!r}"
                            f": {error}") from None
    return params, model_cfg, load_model_tokenizer(directory, tokenizer_file)
