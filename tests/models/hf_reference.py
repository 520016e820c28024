"""The independent reference for the import/export tests: small random models built and run by transformers.

Every parameter is random, norms and biases included (transformers initialises those to constants, which would
hide a swapped or missing tensor), and weights are large enough that greedy decoding has clear winners.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from rlreason.models.transformer import forward, positions_from_mask  # noqa: E402
from rlreason.sampling.sampler import SamplingParams, generate  # noqa: E402

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               head_dim=16, initializer_range=0.1, max_position_embeddings=256, bos_token_id=None,
               eos_token_id=None, pad_token_id=0)

# case -> (transformers config class, settings). Together they cover grouped-query and multi-head attention,
# tied and untied embeddings, q/k/v biases, q/k norms, Gemma's (1 + w) norms and embedding scale, and Gemma 2's
# soft-capping (caps small enough to bite), pre/post norms, query_pre_attn_scalar and a 4-token window.
FAMILY_CASES = {
    "llama_gqa_untied": (transformers.LlamaConfig, dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama_mha_tied": (transformers.LlamaConfig, dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "qwen2_bias_tied": (transformers.Qwen2Config, dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3_qknorm_untied": (transformers.Qwen3Config, dict(num_key_value_heads=1, tie_word_embeddings=False)),
    "gemma": (transformers.GemmaConfig, dict(num_key_value_heads=1)),
    "gemma2_window4": (transformers.Gemma2Config,
                       dict(num_key_value_heads=2, sliding_window=4, query_pre_attn_scalar=24,
                            attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    # transformers' Gemma 2 runs `hidden_activation: gelu` as the exact (erf) GELU; only Gemma 1 reads it as tanh.
    "gemma2_exact_gelu": (transformers.Gemma2Config, dict(num_key_value_heads=2, hidden_activation="gelu")),
}


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Random values for the parameters transformers sets to constants (norm scales, biases)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator))
            elif name.endswith("bias"):
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))


def hf_config(case: str, **overrides) -> transformers.PretrainedConfig:
    config_class, settings = FAMILY_CASES[case]
    return config_class(**{**_COMMON, **settings, **overrides})


def build_hf_model(case: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A random float32 model of `case` (eval mode), with config settings `overrides`."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(case, **overrides), dtype=torch.float32).eval()
    randomize_(model, seed)
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    """float32 logits [B, T, V] of unpadded `tokens` [B, T]."""
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def rlreason_logits(params, cfg, tokens: np.ndarray) -> np.ndarray:
    mask = jnp.ones(tokens.shape, bool)
    logits, _ = forward(params, jnp.asarray(tokens), positions_from_mask(mask), mask, cfg)
    return np.asarray(logits)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) [B, T], left-padded."""
    width = max(len(prompt) for prompt in prompts)
    tokens = np.array([[pad_id] * (width - len(prompt)) + prompt for prompt in prompts], np.int32)
    mask = np.array([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts], np.int32)
    return tokens, mask


def hf_greedy(model, tokens: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
    """transformers' greedy continuation [B, max_new_tokens] of left-padded prompts, never stopping early."""
    with torch.no_grad():
        out = model.generate(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[:, tokens.shape[1]:].numpy()


def rlreason_greedy(params, cfg, tokens: np.ndarray, mask: np.ndarray, max_new_tokens: int,
                    stop_token: int = -1) -> np.ndarray:
    """rlreason's greedy continuation [B, max_new_tokens] (temperature 0)."""
    stop = np.full((tokens.shape[0], 1), stop_token, np.int32)
    sample = jax.jit(generate, static_argnums=(5, 6))
    rollout = sample(params, tokens, mask, stop, jax.random.key(0), cfg,
                     SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    return np.asarray(rollout.tokens)
