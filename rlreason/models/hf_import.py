"""Importing Hugging Face checkpoints (`config.json` + `*.safetensors`, sharded or not) into rlreason params.

`load_params` is the one loader loop, shared with the GGUF import: it checks every tensor a `TensorSource`
must provide (name, shape) before reading anything, then builds each leaf with `jax.make_array_from_callback`,
so that every device reads only the block of the checkpoint its shard holds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Protocol

import jax
import numpy as np
from safetensors import SafetensorError, safe_open

from rlreason.config import ModelConfig
from rlreason.models.families import IGNORED_TENSOR_SUFFIXES, TOP_TENSOR_NAMES, model_config_from_hf, tensor_names
from rlreason.models.hf_layout import LEAF_LAYOUTS, hf_shape, read_leaf_block
from rlreason.models.transformer import Params, param_specs
from rlreason.progress import progress_bar

# safetensors dtypes that hold real numbers the params can be cast from.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


class CheckpointError(ValueError):
    """A checkpoint file is missing, cut short, or lacks a tensor of the expected shape or dtype."""


class TensorSource(Protocol):
    """Tensors by their Hugging Face name, in HF layout."""

    def tensor_shape(self, name: str) -> tuple[int, ...] | None:
        """The tensor's shape, or None when the checkpoint has no such tensor."""

    def read(self, name: str, block: tuple[slice, ...]) -> np.ndarray:
        """A block (contiguous slices per axis) of the tensor."""

    def location(self, name: str) -> str:
        """Where the tensor is (or would be), for error messages."""

    def names(self) -> set[str]:
        """Every tensor name the checkpoint holds."""


def _truncation_report(path: Path) -> str:
    """Which tensors of a safetensors file lie past its end (the header says where each one is)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"the file is {size} bytes, too short for a safetensors header"
        header_length = struct.unpack("<Q", prefix)[0]
        if 8 + header_length > size:
            return f"its header needs {8 + header_length} bytes but the file has {size}"
        header = json.loads(handle.read(header_length))
    data_start = 8 + header_length
    cut = [(name, entry) for name, entry in header.items()
           if name != "__metadata__" and data_start + entry["data_offsets"][1] > size]
    if not cut:
        return "its header is inconsistent with its data"
    name, entry = cut[0]
    return (f"tensor {name!r} (shape {tuple(entry['shape'])}, {entry['dtype']}) needs bytes up to "
            f"{data_start + entry['data_offsets'][1]} but the file has {size}; {len(cut)} tensor(s) are cut: "
            f"the file is truncated")


class SafetensorsSource:
    """The tensors of a HF model directory: `model.safetensors.index.json` + its shards, or every `*.safetensors`."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        index_path = directory / "model.safetensors.index.json"
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = sorted({directory / file for file in weight_map.values()})
        else:
            files = sorted(directory.glob("*.safetensors"))
            weight_map = None
        if not files:
            raise CheckpointError(f"{str(directory)!r} holds no *.safetensors file")
        self._handles = {}
        self._file_of: dict[str, Path] = {}
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"{str(index_path)!r} lists {path.name!r}, which does not exist")
            try:
                handle = safe_open(str(path), framework="numpy")
            except SafetensorError as error:
                raise CheckpointError(f"cannot read {str(path)!r}: {_truncation_report(path)} ({error})") from None
            self._handles[path] = handle
            for name in handle.keys():
                dtype = handle.get_slice(name).get_dtype()
                if dtype not in FLOAT_DTYPES:
                    raise CheckpointError(f"tensor {name!r} in {str(path)!r} has dtype {dtype}; expected a float "
                                          f"dtype ({', '.join(FLOAT_DTYPES)})")
                self._file_of[name] = path
        self._expected_file = {name: directory / file for name, file in (weight_map or {}).items()}
        self._directory = directory

    def tensor_shape(self, name: str) -> tuple[int, ...] | None:
        if name not in self._file_of:
            return None
        return tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())

    def read(self, name: str, block: tuple[slice, ...]) -> np.ndarray:
        return self._handles[self._file_of[name]].get_slice(name)[block]

    def location(self, name: str) -> str:
        path = self._file_of.get(name) or self._expected_file.get(name)
        return repr(str(path)) if path else f"any *.safetensors file in {str(self._directory)!r}"

    def names(self) -> set[str]:
        return set(self._file_of)


def _leaf_tensors(path, spec, names: Params, cfg: ModelConfig) -> tuple[list[str], tuple[int, ...]]:
    """The HF tensors of one leaf (one per layer for the stacked layer leaves) and the leaf shape each holds."""
    leaf = path[-1].key
    if path[0].key == "layers":
        return [names["layers"][leaf].format(layer=layer) for layer in range(cfg.num_layers)], spec.shape[1:]
    return [names[leaf]], spec.shape


def _is_spec(node) -> bool:
    return hasattr(node, "axes")


def _check_tensors(source: TensorSource, cfg: ModelConfig, names: Params, specs: Params) -> None:
    """Raises a CheckpointError naming the first missing, misshapen or unexpected tensor."""
    wanted = {}
    for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=_is_spec):
        tensors, shape = _leaf_tensors(path, spec, names, cfg)
        wanted.update(dict.fromkeys(tensors, hf_shape(LEAF_LAYOUTS[path[-1].key], shape)))
    for tensor, shape in wanted.items():
        found = source.tensor_shape(tensor)
        if found is None:
            raise CheckpointError(f"tensor {tensor!r} (expected shape {shape}) is missing from "
                                  f"{source.location(tensor)}")
        if found != shape:
            raise CheckpointError(f"tensor {tensor!r} in {source.location(tensor)} has shape {found}; the config "
                                  f"expects {shape}")
    # A tied checkpoint may still carry its output matrix; anything else left over would be silently dropped.
    allowed_extra = {TOP_TENSOR_NAMES["lm_head"]} if cfg.tie_embeddings else set()
    unexpected = sorted(name for name in source.names() - wanted.keys() - allowed_extra
                        if not name.endswith(IGNORED_TENSOR_SUFFIXES))
    if unexpected:
        raise CheckpointError(f"the checkpoint has {len(unexpected)} tensor(s) the {cfg.family} model has no place "
                              f"for, e.g. {unexpected[0]!r} in {source.location(unexpected[0])}")


def load_params(source: TensorSource, cfg: ModelConfig, shardings: Params | None = None,
                show_progress: bool = False) -> Params:
    """The params of `cfg` read from `source`, each leaf created on its sharding (one NamedSharding per leaf;
    None: all on the first device) in `cfg.param_dtype`. Every device reads only its own block.
    `show_progress`: a bar over the leaves read (rlreason.progress)."""
    specs = param_specs(cfg)
    names = tensor_names(cfg)
    _check_tensors(source, cfg, names, specs)
    if shardings is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), specs,
                                 is_leaf=_is_spec)
    dtype = jax.numpy.dtype(cfg.param_dtype)

    def make_leaf(path, spec, sharding):
        layout = LEAF_LAYOUTS[path[-1].key]
        tensors, tensor_leaf_shape = _leaf_tensors(path, spec, names, cfg)
        stacked = path[0].key == "layers"

        def read_tensor_block(tensor: str, block: tuple[slice, ...]) -> np.ndarray:
            return read_leaf_block(layout, tensor_leaf_shape, block,
                                   lambda hf_block: source.read(tensor, hf_block)).astype(dtype)

        def read_block(block: tuple[slice, ...]) -> np.ndarray:
            if stacked:
                return np.stack([read_tensor_block(tensor, block[1:]) for tensor in tensors[block[0]]])
            return read_tensor_block(tensors[0], block)

        leaf = jax.make_array_from_callback(spec.shape, sharding, read_block)
        bar.update()
        return leaf

    with progress_bar(total=len(jax.tree.leaves(specs, is_leaf=_is_spec)), desc="read weights", unit="array",
                      show=show_progress) as bar:
        return jax.tree_util.tree_map_with_path(make_leaf, specs, shardings, is_leaf=_is_spec)


def read_hf_config(directory: str | Path) -> dict:
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{str(config_path)!r} does not exist: {str(directory)!r} is not a Hugging Face "
                              f"model directory")
    return json.loads(config_path.read_text())


def import_hf(directory: str | Path, shardings: Params | None = None, param_dtype: str = "float32",
              show_progress: bool = False) -> tuple[Params, ModelConfig]:
    """(params, ModelConfig) of a Hugging Face model directory; see `load_params` for `shardings`."""
    cfg = model_config_from_hf(read_hf_config(directory), param_dtype)
    return load_params(SafetensorsSource(directory), cfg, shardings, show_progress), cfg
