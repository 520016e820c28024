"""A configuration small enough to pretrain and train in seconds; shared by the RL, training and CLI tests.

(A module of its own, not conftest.py: several test folders have a conftest.py, and `from conftest import`
would find whichever was imported first.)
"""

from pathlib import Path

from rlreason.config import load_config

TINY_OVERRIDES = [
    "model.vocab_size=96", "model.hidden_size=48", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
    "model.head_dim=12", "model.intermediate_size=96", "tokenizer.vocab_size=80", "task.min_digits=1",
    "task.max_digits=1", "task.num_train=200", "task.num_eval=8", "pretrain.steps=200", "pretrain.batch_size=32",
    "pretrain.seq_len=44", "pretrain.r1_format_fraction=0.5", "sampling.max_prompt_length=16",
    "sampling.max_completion_length=24", "train.batch_size=4", "train.steps=2", "grpo.num_generations=4",
    "eval.num_samples=4", "grpo.beta=0.0",
]


def tiny_config(*overrides):
    """The demo config shrunk to test size, plus `overrides`."""
    return load_config(Path(__file__).parent.parent / "configs" / "demo_cpu.yaml", TINY_OVERRIDES + list(overrides))
