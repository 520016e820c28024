"""Model families: Hugging Face `config.json` <-> ModelConfig, and the HF tensor name of every parameter leaf.

One `Family` row per supported architecture holds everything that differs between them; the import, export
and GGUF code read these rows and never branch on a family name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rlreason.config import ModelConfig
from rlreason.models.transformer import layer_windows, param_specs


class UnsupportedModelError(ValueError):
    """A checkpoint's architecture or one of its settings is not something the rlreason model implements."""


@dataclasses.dataclass(frozen=True)
class Family:
    """How one architecture appears in Hugging Face checkpoints.

    features: ModelConfig fields every model of the family has (they are not read from config.json).
    activation_key: the config.json key holding the MLP activation.
    tied_by_default: `tie_word_embeddings` when config.json leaves it out (the transformers class default).
    bias_key: config.json key that turns on q/k/v biases, or None when the family fixes them by `features`.
    plain_gelu_is_tanh: Gemma 1 checkpoints that say "gelu" were trained with the tanh approximation, and
        transformers runs them with it; elsewhere (Gemma 2 included) "gelu" is the exact GELU.
    legacy_window_pattern: the sliding_window_pattern of files that predate config.json's `layer_types`.
    optional_fields: ModelConfig fields beyond the common ones that the family's config.json can set.
    layer_names: parameter leaf -> tensor name under `model.layers.{i}.`, for leaves named differently from
        the shared `LAYER_TENSOR_NAMES`.
    """

    name: str
    architecture: str
    features: dict[str, Any]
    activation_key: str = "hidden_act"
    tied_by_default: bool = False
    bias_key: str | None = "attention_bias"
    plain_gelu_is_tanh: bool = False
    legacy_window_pattern: int = 0
    optional_fields: tuple[str, ...] = ()
    layer_names: dict[str, str] = dataclasses.field(default_factory=dict)


_GEMMA_FEATURES = {"norm_scale_plus_one": True, "embed_scale": True}
_GEMMA_KEYWORDS = {"tied_by_default": True}

FAMILIES = {
    family.name: family
    for family in (
        Family("llama", "LlamaForCausalLM", {}),
        Family("qwen2", "Qwen2ForCausalLM", {"qkv_bias": True}, bias_key=None, optional_fields=("sliding_window",)),
        Family("qwen3", "Qwen3ForCausalLM", {"qk_norm": True}, optional_fields=("sliding_window",)),
        Family("gemma", "GemmaForCausalLM", _GEMMA_FEATURES, plain_gelu_is_tanh=True, **_GEMMA_KEYWORDS),
        Family("gemma2", "Gemma2ForCausalLM", {**_GEMMA_FEATURES, "post_norms": True},
               activation_key="hidden_activation", legacy_window_pattern=2, **_GEMMA_KEYWORDS,
               optional_fields=("sliding_window", "attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar"),
               # Gemma 2's `post_attention_layernorm` normalises the attention output, not the MLP input.
               layer_names={"mlp_norm": "pre_feedforward_layernorm.weight",
                            "post_attn_norm": "post_attention_layernorm.weight",
                            "post_mlp_norm": "post_feedforward_layernorm.weight"}),
    )
}

# Parameter leaf (under params["layers"]) -> tensor name under `model.layers.{i}.`.
LAYER_TENSOR_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "q_proj": "self_attn.q_proj.weight",
    "k_proj": "self_attn.k_proj.weight",
    "v_proj": "self_attn.v_proj.weight",
    "o_proj": "self_attn.o_proj.weight",
    "q_bias": "self_attn.q_proj.bias",
    "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate_proj": "mlp.gate_proj.weight",
    "up_proj": "mlp.up_proj.weight",
    "down_proj": "mlp.down_proj.weight",
}
TOP_TENSOR_NAMES = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
                    "lm_head": "lm_head.weight"}

# Tensors some checkpoints carry that hold nothing the model needs (precomputed rotary frequencies).
IGNORED_TENSOR_SUFFIXES = ("rotary_emb.inv_freq",)

# ModelConfig field -> config.json key, for the fields that copy over unchanged.
_SAME_VALUE_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "rms_norm_eps": "rms_norm_eps",
    "max_position_embeddings": "max_position_embeddings",
}
# ModelConfig field -> config.json key for the Gemma 2 scalars, where null in config.json means "off" (0).
_OPTIONAL_SCALAR_KEYS = {
    "attn_logit_softcap": "attn_logit_softcapping",
    "final_logit_softcap": "final_logit_softcapping",
    "query_pre_attn_scalar": "query_pre_attn_scalar",
}
# config.json activation name -> ModelConfig.hidden_act (and back, for export).
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "gelu": "gelu"}
_EXPORTED_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def family_of(hf_config: dict) -> Family:
    """The Family of a config.json, from its `model_type`."""
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"unknown architecture: config.json has model_type {model_type!r} "
            f"(architectures {hf_config.get('architectures')}); supported model types: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def _rope_theta(hf_config: dict) -> float:
    """The rotary base; only plain rotary embeddings are implemented, so any scaling is refused."""
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedModelError(f"config.json asks for rope scaling {rope!r}; only plain rotary embeddings "
                                    f"(rope_type 'default') are supported")
    return float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0)))


def _window_from_layer_types(hf_config: dict, family: Family) -> tuple[int, int]:
    """(sliding_window, sliding_window_pattern) of config.json's per-layer attention types."""
    num_layers = hf_config["num_hidden_layers"]
    layer_types = hf_config.get("layer_types")
    if layer_types is None and family.legacy_window_pattern:
        # Files written before `layer_types` existed state the family's fixed pattern nowhere.
        layer_types = ["full_attention" if (i + 1) % family.legacy_window_pattern == 0 else "sliding_attention"
                       for i in range(num_layers)]
    if layer_types is None and hf_config.get("use_sliding_window"):
        raise UnsupportedModelError("config.json sets use_sliding_window but no layer_types; re-save it with a "
                                    "recent transformers so that the windowed layers are listed")
    windowed = [kind == "sliding_attention" for kind in layer_types or ()]
    if not any(windowed):
        return 0, 0
    window = hf_config.get("sliding_window")
    if not window:
        raise UnsupportedModelError(f"config.json has sliding-window layers but sliding_window is {window!r}")
    pattern = 0 if all(windowed) else windowed.index(False) + 1
    expected = [pattern == 0 or (i + 1) % pattern != 0 for i in range(num_layers)]
    if windowed != expected:
        raise UnsupportedModelError(f"config.json layer_types {layer_types} is not a repeating pattern of windowed "
                                    f"layers followed by one global layer; the model cannot express it")
    return int(window), pattern


def model_config_from_hf(hf_config: dict, param_dtype: str = "float32") -> ModelConfig:
    """The ModelConfig of a Hugging Face config.json (as a dict)."""
    family = family_of(hf_config)
    if family.bias_key and hf_config.get(family.bias_key):
        raise UnsupportedModelError(f"config.json sets {family.bias_key}: true, which adds an output-projection bias "
                                    f"that the model does not have")
    if hf_config.get("mlp_bias"):
        raise UnsupportedModelError("config.json sets mlp_bias: true; MLP biases are not supported")
    activation = hf_config.get(family.activation_key) or hf_config.get("hidden_act")
    if activation not in _ACTIVATIONS:
        raise UnsupportedModelError(f"config.json activation {activation!r} is not supported for {family.name} "
                                    f"(supported: {', '.join(_ACTIVATIONS)})")
    fields = {field: hf_config[key] for field, key in _SAME_VALUE_KEYS.items()}
    fields.update({field: float(hf_config.get(key) or 0.0) for field, key in _OPTIONAL_SCALAR_KEYS.items()})
    head_dim = hf_config.get("head_dim") or hf_config["hidden_size"] // hf_config["num_attention_heads"]
    window, pattern = _window_from_layer_types(hf_config, family)
    return ModelConfig(
        family=family.name,
        num_kv_heads=hf_config.get("num_key_value_heads") or hf_config["num_attention_heads"],
        head_dim=head_dim,
        hidden_act="gelu_tanh" if activation == "gelu" and family.plain_gelu_is_tanh else _ACTIVATIONS[activation],
        rope_theta=_rope_theta(hf_config),
        tie_embeddings=hf_config.get("tie_word_embeddings", family.tied_by_default),
        sliding_window=window,
        sliding_window_pattern=pattern,
        dtype=param_dtype,
        param_dtype=param_dtype,
        **fields,
        **family.features,
    )


def hf_config_from_model(cfg: ModelConfig, special_ids: dict[str, int | None] | None = None) -> dict:
    """The config.json (as a dict) that makes transformers build the same model as `cfg`.

    special_ids: optional {"bos": id, "eos": id, "pad": id}, written as `bos_token_id` etc. so that
    generation stops where rlreason's does.
    Raises UnsupportedModelError when `cfg` turns on a feature its family's config.json cannot express.
    """
    family = FAMILIES[cfg.family]
    defaults = ModelConfig()
    inexpressible = [
        f"{name}={getattr(cfg, name)!r}" for name in _FAMILY_FIXED_FIELDS
        if getattr(cfg, name) != family.features.get(name, getattr(defaults, name))
    ] + [
        f"{name}={getattr(cfg, name)!r}" for name in (*_OPTIONAL_SCALAR_KEYS, "sliding_window")
        if name not in family.optional_fields and getattr(cfg, name) != getattr(defaults, name)
    ]
    if inexpressible:
        raise UnsupportedModelError(f"a {cfg.family} checkpoint cannot express the model settings "
                                    f"{', '.join(inexpressible)}")
    windows = layer_windows(cfg)
    hf_config = {
        "architectures": [family.architecture],
        "model_type": family.name,
        **{key: getattr(cfg, field) for field, key in _SAME_VALUE_KEYS.items()},
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        family.activation_key: _EXPORTED_ACTIVATIONS[cfg.hidden_act],
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": cfg.param_dtype,
    }
    if family.bias_key:
        hf_config[family.bias_key] = False
    # 0 ("off") is null in config.json, except the attention scale, whose 0 stands for head_dim (and which
    # transformers' strict Gemma2Config takes only as an int when it is whole).
    attention_scalar = cfg.query_pre_attn_scalar or cfg.head_dim
    optional_values = {**{field: getattr(cfg, field) or None for field in _OPTIONAL_SCALAR_KEYS},
                       "query_pre_attn_scalar": int(attention_scalar) if attention_scalar == int(attention_scalar)
                       else attention_scalar}
    hf_config.update({key: optional_values[field] for field, key in _OPTIONAL_SCALAR_KEYS.items()
                      if field in family.optional_fields})
    if "sliding_window" in family.optional_fields:
        hf_config.update(
            layer_types=["sliding_attention" if window else "full_attention" for window in windows],
            sliding_window=cfg.sliding_window or None, use_sliding_window=bool(cfg.sliding_window))
    hf_config.update({f"{name}_token_id": token_id for name, token_id in (special_ids or {}).items()})
    return hf_config


# ModelConfig fields that a family fixes: export checks them instead of writing them.
_FAMILY_FIXED_FIELDS = ("qkv_bias", "qk_norm", "post_norms", "norm_scale_plus_one", "embed_scale")


def tensor_names(cfg: ModelConfig) -> dict[str, Any]:
    """The HF tensor name of every parameter leaf, in the params' tree structure.

    Layer leaves hold a format string with `{layer}`; the others hold the name itself.
    """
    specs = param_specs(cfg)
    layer_names = {**LAYER_TENSOR_NAMES, **FAMILIES[cfg.family].layer_names}
    names: dict[str, Any] = {key: TOP_TENSOR_NAMES[key] for key in specs if key != "layers"}
    names["layers"] = {leaf: "model.layers.{layer}." + layer_names[leaf] for leaf in specs["layers"]}
    return names
