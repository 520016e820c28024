"""Writes a transformers model as a GGUF file the way llama.cpp's `convert_hf_to_gguf.py` does, for the tests.

llama.cpp renames tensors, permutes Llama's q/k rows for its rotary layout, stores Gemma norm scales as
(1 + w), and quantizes matrices (here Q8_0, Q4_1 or float).
"""

from __future__ import annotations

import re

import gguf
import numpy as np

# HF tensor name pattern -> GGUF name, as llama.cpp's tensor map has them.
_RENAMES = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.", r"blk.\1.attn_norm."),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.", r"blk.\1.attn_q."),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.", r"blk.\1.attn_k."),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.", r"blk.\1.attn_v."),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.", r"blk.\1.attn_output."),
    (r"model\.layers\.(\d+)\.self_attn\.q_norm\.", r"blk.\1.attn_q_norm."),
    (r"model\.layers\.(\d+)\.self_attn\.k_norm\.", r"blk.\1.attn_k_norm."),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.", r"blk.\1.ffn_gate."),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.", r"blk.\1.ffn_up."),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.", r"blk.\1.ffn_down."),
]
# Gemma 2's extra norms; its `post_attention_layernorm` is not the MLP input norm it is in Llama.
_GEMMA2_NORMS = [
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.", r"blk.\1.post_attention_norm."),
    (r"model\.layers\.(\d+)\.pre_feedforward_layernorm\.", r"blk.\1.ffn_norm."),
    (r"model\.layers\.(\d+)\.post_feedforward_layernorm\.", r"blk.\1.post_ffw_norm."),
]
_LLAMA_NORMS = [(r"model\.layers\.(\d+)\.post_attention_layernorm\.", r"blk.\1.ffn_norm.")]


def _gguf_name(name: str, architecture: str) -> str:
    for pattern, replacement in _RENAMES + (_GEMMA2_NORMS if architecture == "gemma2" else _LLAMA_NORMS):
        if re.fullmatch(pattern + r".*", name):
            return re.sub(pattern, replacement, name)
    raise KeyError(name)


def _llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: rotary pairs interleaved instead of split in halves."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(model, path, quantization: gguf.GGMLQuantizationType, extra_metadata=None) -> None:
    """Writes `model` (a transformers Llama / Qwen2 / Qwen3 / Gemma 2 causal LM) to `path`.

    extra_metadata: optional function given the GGUFWriter, to add metadata before the file is written.
    """
    config = model.config
    architecture = config.model_type
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if architecture == "gemma2":
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)
    if extra_metadata is not None:
        extra_metadata(writer)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        values = tensor.float().numpy()
        if architecture == "llama" and ".q_proj." in name:
            values = _llama_cpp_permute(values, config.num_attention_heads)
        if architecture == "llama" and ".k_proj." in name:
            values = _llama_cpp_permute(values, config.num_key_value_heads)
        if architecture.startswith("gemma") and name.endswith("norm.weight"):
            values = values + 1
        # llama.cpp keeps vectors (norms, biases) in float32.
        kind = quantization if values.ndim == 2 else gguf.GGMLQuantizationType.F32
        writer.add_tensor(_gguf_name(name, architecture), gguf.quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
