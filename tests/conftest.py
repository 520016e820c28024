"""Shared test settings: a persistent compilation cache, and a tiny pretrained base model."""

import os

import jax
import pytest

from tiny_run import tiny_config

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/rlreason-jax-tests"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory):
    """A model directory pretrained for a few seconds: it sometimes writes the R1 format, so rewards vary."""
    from rlreason.train.pretrain import pretrain

    return pretrain(tiny_config(), tmp_path_factory.mktemp("tiny_base"), show_progress=False)
