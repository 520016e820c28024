"""Exporting rlreason params as a Hugging Face checkpoint: `config.json` + safetensors that transformers loads.

Checkpoints larger than `max_shard_bytes` are split into `model-0000i-of-0000n.safetensors` files with a
`model.safetensors.index.json`, as transformers writes them. Leaves are gathered to the host one layer at a
time, so a sharded model is written without holding a second full copy in host memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from safetensors.numpy import save_file

from rlreason.config import ModelConfig
from rlreason.models.families import hf_config_from_model, tensor_names
from rlreason.models.hf_layout import LEAF_LAYOUTS, hf_shape, to_hf
from rlreason.models.transformer import Params, param_specs
from rlreason.progress import progress_bar

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def _tensor_thunks(params: Params, cfg: ModelConfig) -> list[tuple[str, int, Callable[[], np.ndarray]]]:
    """(HF name, byte size, function that builds the HF tensor) for every tensor, in checkpoint order."""
    names = tensor_names(cfg)
    specs = param_specs(cfg)
    itemsize = np.dtype(jax.numpy.dtype(cfg.param_dtype)).itemsize

    def entry(name: str, leaf: str, shape: tuple[int, ...], read: Callable[[], jax.Array]):
        nbytes = int(np.prod(hf_shape(LEAF_LAYOUTS[leaf], shape))) * itemsize
        return name, nbytes, lambda: np.ascontiguousarray(to_hf(LEAF_LAYOUTS[leaf], np.asarray(read())))

    thunks = [entry(names[leaf], leaf, specs[leaf].shape, lambda leaf=leaf: params[leaf])
              for leaf in specs if leaf != "layers"]
    for layer in range(cfg.num_layers):
        thunks += [entry(names["layers"][leaf].format(layer=layer), leaf, spec.shape[1:],
                         lambda leaf=leaf, layer=layer: params["layers"][leaf][layer])
                   for leaf, spec in specs["layers"].items()]
    return thunks


def save_hf(params: Params, cfg: ModelConfig, out_dir: str | Path, special_ids: dict[str, int | None] | None = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, show_progress: bool = False) -> None:
    """Writes `out_dir/config.json` and the weights (in `cfg.param_dtype`) as safetensors.

    special_ids: optional {"bos": id, "eos": id, "pad": id} for config.json (see `hf_config_from_model`).
    show_progress: a bar over the safetensors files written (rlreason.progress).
    """
    if not all(getattr(leaf, "is_fully_addressable", True) for leaf in jax.tree.leaves(params)):
        raise ValueError("save_hf writes from one process, but the params span several; gather them first "
                         "(jax.experimental.multihost_utils.process_allgather)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config = hf_config_from_model(cfg, special_ids)
    shards: list[list[tuple[str, int, Callable[[], np.ndarray]]]] = [[]]
    for thunk in _tensor_thunks(params, cfg):
        if shards[-1] and sum(size for _, size, _ in shards[-1]) + thunk[1] > max_shard_bytes:
            shards.append([])
        shards[-1].append(thunk)
    file_names = (["model.safetensors"] if len(shards) == 1 else
                  [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    # Files of an earlier export into the same folder would otherwise shadow or join the new ones.
    for stale in out_dir.glob("model*.safetensors*"):
        stale.unlink()
    weight_map = {}
    for file_name, shard in progress_bar(list(zip(file_names, shards)), desc="write safetensors", unit="file",
                                         show=show_progress):
        save_file({name: build() for name, _, build in shard}, str(out_dir / file_name), metadata={"format": "pt"})
        weight_map.update({name: file_name for name, _, _ in shard})
    if len(shards) > 1:
        total_size = sum(size for shard in shards for _, size, _ in shard)
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2))
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
