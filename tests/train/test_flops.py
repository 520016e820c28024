"""The GRPO step's model-FLOP count against the peers' published figures for their shared workload
(shared/bench/peers/README.md: 140.7 GFLOP per step = prefill 2.7 + decode 25.1 + reference 28.2 + policy
forward + backward 84.6), and against a hand count of one layer."""

from __future__ import annotations

import pytest

from rlreason.config import ModelConfig
from rlreason.train.flops import forward_flops, grpo_step_flops, matmul_weights, measured_peak_flops

# The peers' workload: Qwen2 shape, vocab 512, hidden 256, 4 layers, 4 heads of 64, 2 KV heads, MLP 688; 64 rows of
# 64 new tokens after 7-token prompts ("<bos>" + "ab+cd=" at most), a reference model, one update pass.
PEERS_MODEL = ModelConfig(family="qwen2", vocab_size=512, hidden_size=256, num_layers=4, num_heads=4,
                          num_kv_heads=2, head_dim=64, intermediate_size=688, qkv_bias=True, tie_embeddings=False)


def test_the_peers_workload_costs_what_their_harness_counts():
    phases = grpo_step_flops(PEERS_MODEL, rows=64, prompt_length=7, completion_length=64, reference=True,
                             policy_passes=1)
    published = {"prefill": 2.7, "decode": 25.1, "reference": 28.2, "policy": 84.6, "total": 140.7}
    for phase, gflop in published.items():
        assert phases[phase] / 1e9 == pytest.approx(gflop, abs=0.05), phase


def test_one_layer_by_hand():
    cfg = ModelConfig(vocab_size=10, hidden_size=4, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=2,
                      intermediate_size=6)
    # q 4x4, k 4x2, v 4x2, o 4x4, MLP 3 x 4x6, output 4x10
    assert matmul_weights(cfg) == 16 + 8 + 8 + 16 + 72 + 40
    # 3 tokens, causal: 1 + 2 + 3 keys seen; scores and weighted sum cost 2 * 2 FLOPs per (query head dim, key)
    assert forward_flops(cfg, 3, 6) == 2 * 160 * 3 + 4 * 4 * 6
    no_reference = grpo_step_flops(cfg, rows=2, prompt_length=2, completion_length=2, reference=False,
                                   policy_passes=2)
    assert no_reference["reference"] == 0
    assert no_reference["policy"] == 2 * 3 * 2 * forward_flops(cfg, 4, 10)
    lora = grpo_step_flops(cfg, rows=2, prompt_length=2, completion_length=2, reference=False, policy_passes=2,
                           weight_gradients=False)  # the backward pass takes no weight gradients
    assert lora["policy"] == 2 * 2 * 2 * forward_flops(cfg, 4, 10)


def test_the_measured_peak_is_a_rate():
    assert measured_peak_flops(size=256, repeats=3) > 1e8  # any CPU multiplies faster than 0.1 GFLOP/s
