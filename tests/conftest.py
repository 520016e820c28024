"""Shared test settings: a persistent compilation cache so repeated runs skip XLA compiles."""

import os

import jax

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/rlreason-jax-tests"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
