"""What one GRPO step costs in model FLOPs, and what this device can do: the two halves of MFU.

The count is the workload's, not this implementation's: 2 FLOPs per matmul weight per processed token, plus the
attention scores and their weighted sum, for prefilling every row's prompt, decoding its completion over the
KV cache, the reference forward pass (beta > 0) and the policy's forward + backward passes (3 forward passes'
worth) per update pass; with LoRA the backward pass forms no weight gradients, so 2 forward passes' worth (the
adapters' own rank-r products are left out: under 2 r / hidden_size of the rest). It counts as the peers' harness does (`shared/bench/peers/jax_grpo_flops.py`), so MFU
figures compare across frameworks even where rlreason skips work (a group's prompt is prefilled once).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from rlreason.config import ModelConfig


def matmul_weights(cfg: ModelConfig) -> int:
    """Weights that multiply every token: the layers' projections and the output layer."""
    q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = cfg.hidden_size * (2 * q_dim + 2 * kv_dim) + 3 * cfg.hidden_size * cfg.intermediate_size
    return cfg.num_layers * per_layer + cfg.hidden_size * cfg.vocab_size


def forward_flops(cfg: ModelConfig, new_tokens: int, context_sum: int) -> int:
    """FLOPs of one row's forward pass over `new_tokens` tokens whose queries see `context_sum` keys in all."""
    attention = cfg.num_layers * 4 * cfg.num_heads * cfg.head_dim * context_sum  # QK^T and PV
    return 2 * matmul_weights(cfg) * new_tokens + attention


def grpo_step_flops(cfg: ModelConfig, rows: int, prompt_length: int, completion_length: int, reference: bool,
                    policy_passes: int, weight_gradients: bool = True) -> dict[str, int]:
    """Model FLOPs of a GRPO step over `rows` completions of `completion_length` tokens after prompts of
    `prompt_length`, by phase, and their "total". `policy_passes`: num_iterations (each a forward + backward).
    `weight_gradients`: False for LoRA, whose backward pass takes gradients of the activations only."""
    total_length = prompt_length + completion_length
    causal = lambda length: length * (length + 1) // 2  # noqa: E731
    full = rows * forward_flops(cfg, total_length, causal(total_length))
    phases = {
        "prefill": rows * forward_flops(cfg, prompt_length, causal(prompt_length)),
        "decode": rows * sum(forward_flops(cfg, 1, context) for context in range(prompt_length + 1, total_length)),
        "reference": full if reference else 0,
        "policy": (3 if weight_gradients else 2) * full * policy_passes,
    }
    phases["total"] = sum(phases.values())
    return phases


def measured_peak_flops(dtype=jnp.float32, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a size x size matmul on the default device in `dtype`: the fastest of `repeats` timed runs (other
    work on the machine only slows a run, and a peak that it lowered would overstate the MFU measured against it)."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, a))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / min(seconds)


def run_peak_flops(dtype=jnp.float32) -> float:
    """The matmul FLOP/s of all the run's devices together: one device measured, times the device count. On CPU
    the simulated devices of a process share its host's cores, so there it is one measurement per process."""
    per_device = measured_peak_flops(dtype)
    if jax.devices()[0].platform == "cpu":
        return per_device * jax.process_count()
    return per_device * jax.device_count()
