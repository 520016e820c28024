"""Shared test settings: a persistent compilation cache so repeated runs skip XLA compiles."""

import os

import jax

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/rlreason-jax-tests"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import pytest  # noqa: E402

from rlreason.config import load_config  # noqa: E402

# A model small enough to pretrain in seconds; shared by the RL and training tests.
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
    root = __import__("pathlib").Path(__file__).parent.parent
    return load_config(root / "configs" / "demo_cpu.yaml", TINY_OVERRIDES + list(overrides))


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory):
    """A model directory pretrained for a few seconds: it sometimes writes the R1 format, so rewards vary."""
    from rlreason.train.pretrain import pretrain

    return pretrain(tiny_config(), tmp_path_factory.mktemp("tiny_base"), show_progress=False)
