"""Parameters and optimizer state created directly in their shards: no device ever holds a full copy."""

from __future__ import annotations

import functools

import jax
import optax

from rlreason.config import ModelConfig
from rlreason.models.transformer import Params, init_params


def params_initializer(model_cfg: ModelConfig, shardings: Params):
    """`rng -> params`, compiled with `out_shardings`: each device generates only its own shards.

    The values equal those of an unsharded, jitted `init_params(model_cfg, rng)` because the random bits are
    partitionable (jax_threefry_partitionable, the default): a shard's numbers do not depend on the layout.
    `.lower(rng).compile().memory_analysis()` tells the per-device peak without running it.
    """
    return jax.jit(functools.partial(init_params, model_cfg), out_shardings=shardings)


def init_params_sharded(model_cfg: ModelConfig, rng: jax.Array, shardings: Params) -> Params:
    return params_initializer(model_cfg, shardings)(rng)


def init_opt_state_sharded(optimizer: optax.GradientTransformation, params: Params, shardings):
    """`optimizer.init(params)` with its state placed by `shardings` (see `rules.opt_state_shardings`)."""
    return jax.jit(optimizer.init, out_shardings=shardings)(params)
