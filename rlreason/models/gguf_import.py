"""Importing a GGUF file (llama.cpp's format, e.g. Q4_1 / Q8_0 quantized) into rlreason params.

The file's metadata becomes a config.json-like dict (then the ModelConfig, as for a Hugging Face import) and
its tensors are presented under their Hugging Face names, dequantized to float32 and with llama.cpp's own
changes undone, to the one loader loop in `hf_import.load_params`:

- llama: q/k projection rows are permuted within each head (llama.cpp rotates interleaved pairs, HF rotates
  halves), so the rows are put back;
- gemma, gemma2: RMSNorm scales are stored as (1 + w), so 1 is subtracted.

Quantization blocks run along rows, so a device reads and dequantizes only the rows of its shard.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np

from rlreason.config import ModelConfig
from rlreason.models.families import UnsupportedModelError, model_config_from_hf, tensor_names
from rlreason.models.hf_import import CheckpointError, load_params
from rlreason.models.transformer import Params
from rlreason.tokenizers.gguf_vocab import gguf_metadata


@dataclasses.dataclass(frozen=True)
class GGUFArchitecture:
    """family: the rlreason family; activation: the config.json activation the architecture implies;
    permuted_qk: q/k rows are in llama.cpp's rotary order; norm_offset: added to norm scales by llama.cpp."""

    family: str
    activation: str
    permuted_qk: bool = False
    norm_offset: float = 0.0


ARCHITECTURES = {
    "llama": GGUFArchitecture("llama", "silu", permuted_qk=True),
    "qwen2": GGUFArchitecture("qwen2", "silu"),
    "qwen3": GGUFArchitecture("qwen3", "silu"),
    "gemma": GGUFArchitecture("gemma", "gelu_pytorch_tanh", norm_offset=1.0),
    "gemma2": GGUFArchitecture("gemma2", "gelu_pytorch_tanh", norm_offset=1.0),
}

# Parameter leaf -> GGUF tensor name (layer leaves under `blk.{layer}.`).
GGUF_LAYER_NAMES = {
    "attn_norm": "attn_norm.weight", "q_proj": "attn_q.weight", "k_proj": "attn_k.weight",
    "v_proj": "attn_v.weight", "o_proj": "attn_output.weight", "q_bias": "attn_q.bias", "k_bias": "attn_k.bias",
    "v_bias": "attn_v.bias", "q_norm": "attn_q_norm.weight", "k_norm": "attn_k_norm.weight",
    "post_attn_norm": "post_attention_norm.weight", "mlp_norm": "ffn_norm.weight",
    "gate_proj": "ffn_gate.weight", "up_proj": "ffn_up.weight", "down_proj": "ffn_down.weight",
    "post_mlp_norm": "post_ffw_norm.weight",
}
GGUF_TOP_NAMES = {"embed": "token_embd.weight", "final_norm": "output_norm.weight", "lm_head": "output.weight"}
_PERMUTED_LEAVES = ("q_proj", "k_proj")

# GGUF metadata key (after `{architecture}.`) -> config.json key.
_METADATA_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
    "attention.sliding_window": "sliding_window",
}


class _TensorExtentReader(gguf.GGUFReader):
    """Reads a GGUF file's tensor table without touching tensor data, to tell which tensor a short file cuts."""

    def _build_tensors(self, start_offs: int, fields) -> None:
        self.extents = []
        for field in fields:
            _, name, _, dims, raw_type, offset = field.parts
            block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(raw_type[0])]
            end = start_offs + int(offset[0]) + int(np.prod(dims)) * type_size // block_size
            self.extents.append((bytes(name).decode(), tuple(reversed(dims.tolist())), end))


def _open_reader(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError) as error:
        size = path.stat().st_size
        try:
            cut = [(name, shape, end) for name, shape, end in _TensorExtentReader(path).extents if end > size]
        except (ValueError, IndexError):
            raise CheckpointError(f"cannot read GGUF file {str(path)!r} ({size} bytes): its metadata is cut short "
                                  f"or corrupt ({error})") from None
        if not cut:
            raise CheckpointError(f"cannot read GGUF file {str(path)!r}: {error}") from None
        name, shape, end = cut[0]
        raise CheckpointError(f"GGUF file {str(path)!r} is truncated: tensor {name!r} (shape {shape}) needs bytes up "
                              f"to {end} but the file has {size}; {len(cut)} tensor(s) are cut") from None


def hf_config_from_gguf(reader: gguf.GGUFReader, path: Path) -> dict:
    """The config.json (as a dict) equivalent to a GGUF file's metadata."""
    architecture_name = gguf_metadata(reader, "general.architecture")
    if architecture_name not in ARCHITECTURES:
        raise UnsupportedModelError(f"unknown architecture: GGUF file {str(path)!r} has general.architecture "
                                    f"{architecture_name!r}; supported: {', '.join(ARCHITECTURES)}")
    architecture = ARCHITECTURES[architecture_name]
    tensor_shapes = {tensor.name: tuple(reversed(tensor.shape.tolist())) for tensor in reader.tensors}
    hf_config = {hf_key: gguf_metadata(reader, f"{architecture_name}.{key}") for key, hf_key in _METADATA_KEYS.items()
                 if f"{architecture_name}.{key}" in reader.fields}
    scaling = gguf_metadata(reader, f"{architecture_name}.rope.scaling.type", "none")
    hf_config.update(
        model_type=architecture.family,
        vocab_size=tensor_shapes[GGUF_TOP_NAMES["embed"]][0],
        hidden_act=architecture.activation,
        hidden_activation=architecture.activation,
        rope_scaling={"rope_type": "default" if scaling == "none" else scaling},
        tie_word_embeddings=GGUF_TOP_NAMES["lm_head"] not in tensor_shapes,
    )
    if hf_config.get("sliding_window"):
        # GGUF names no pattern; the only windowed architecture here (gemma2) alternates.
        hf_config["layer_types"] = ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention"
                                    for i in range(hf_config["num_hidden_layers"])]
    if "attn_logit_softcapping" in hf_config:
        # llama.cpp scales Gemma 2 queries by head_dim ** -0.5 and stores no query_pre_attn_scalar.
        hf_config["query_pre_attn_scalar"] = hf_config.get("head_dim") or (
            hf_config["hidden_size"] // hf_config["num_attention_heads"])
    return hf_config


class GGUFSource:
    """The tensors of a GGUF file under their Hugging Face names, dequantized to float32 (a TensorSource)."""

    def __init__(self, reader: gguf.GGUFReader, path: Path, cfg: ModelConfig, architecture: GGUFArchitecture):
        self._path = path
        self._cfg = cfg
        self._architecture = architecture
        self._tensors = {tensor.name: tensor for tensor in reader.tensors}
        hf_names, gguf_names = tensor_names(cfg), _gguf_tensor_names(cfg)
        self._gguf_name = {hf_names[leaf]: gguf_names[leaf] for leaf in hf_names if leaf != "layers"}
        self._permuted = set()
        for leaf, name in hf_names["layers"].items():
            for layer in range(cfg.num_layers):
                self._gguf_name[name.format(layer=layer)] = gguf_names["layers"][leaf].format(layer=layer)
                if architecture.permuted_qk and leaf in _PERMUTED_LEAVES:
                    self._permuted.add(name.format(layer=layer))
        for tensor in self._tensors.values():
            try:
                gguf.quants.dequantize(tensor.data[:1], tensor.tensor_type)
            except NotImplementedError:
                raise CheckpointError(f"tensor {tensor.name!r} in {str(path)!r} has type {tensor.tensor_type.name}, "
                                      f"which the gguf package cannot dequantize") from None

    def tensor_shape(self, name: str) -> tuple[int, ...] | None:
        tensor = self._tensors.get(self._gguf_name.get(name, name))
        return None if tensor is None else tuple(reversed(tensor.shape.tolist()))

    def read(self, name: str, block: tuple[slice, ...]) -> np.ndarray:
        tensor = self._tensors[self._gguf_name[name]]
        rows = gguf.quants.dequantize(tensor.data[block[0]], tensor.tensor_type).astype(np.float32)
        if name in self._permuted:
            head_dim = self._cfg.head_dim
            if block[0].start % head_dim or len(rows) % head_dim:
                raise ValueError(f"q/k rows of {name!r} must be read in whole heads, got {block[0]}")
            heads = len(rows) // head_dim
            rows = rows.reshape(heads, head_dim // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)
        if name.endswith("norm.weight"):
            rows = rows - self._architecture.norm_offset
        return rows[(slice(None),) + block[1:]]

    def location(self, name: str) -> str:
        return f"{str(self._path)!r} (GGUF name {self._gguf_name.get(name, name)!r})"

    def names(self) -> set[str]:
        hf_name_of = {gguf_name: hf_name for hf_name, gguf_name in self._gguf_name.items()}
        return {hf_name_of.get(name, name) for name in self._tensors}


def _gguf_tensor_names(cfg: ModelConfig) -> dict:
    """The GGUF name of every parameter leaf, shaped like `families.tensor_names(cfg)`."""
    names = tensor_names(cfg)
    return {**{leaf: GGUF_TOP_NAMES[leaf] for leaf in names if leaf != "layers"},
            "layers": {leaf: "blk.{layer}." + GGUF_LAYER_NAMES[leaf] for leaf in names["layers"]}}


def import_gguf(path: str | Path, shardings: Params | None = None, param_dtype: str = "float32",
                show_progress: bool = False) -> tuple[Params, ModelConfig]:
    """(params, ModelConfig) of a GGUF file; see `hf_import.load_params` for `shardings`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {str(path)!r} does not exist")
    reader = _open_reader(path)
    hf_config = hf_config_from_gguf(reader, path)
    cfg = model_config_from_hf(hf_config, param_dtype)
    source = GGUFSource(reader, path, cfg, ARCHITECTURES[hf_config["model_type"]])
    return load_params(source, cfg, shardings, show_progress), cfg
