"""Parameters created directly in their shards: no device ever holds a full copy."""

from __future__ import annotations

import jax

from rlreason.config import ModelConfig
from rlreason.models.transformer import Params, init_params


def init_params_sharded(model_cfg: ModelConfig, rng: jax.Array, shardings: Params) -> Params:
    """`init_params` compiled with `out_shardings`: each device generates only its own shards.

    The values equal those of an unsharded `init_params(model_cfg, rng)`, because the random bits are
    partitionable (jax_threefry_partitionable, the default): a shard's numbers do not depend on the layout.
    """
    return jax.jit(init_params, static_argnums=0, out_shardings=shardings)(model_cfg, rng)
