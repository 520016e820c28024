"""Packed rows (`segment_ids`): each example of a packed row gets the logits it gets alone in a row of its own,
with global and sliding-window attention alike."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.config import ModelConfig
from rlreason.models.transformer import forward, init_cache, init_params

CASES = {
    "global": ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                          intermediate_size=48, init_std=0.3),
    "window": ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=8,
                          intermediate_size=48, init_std=0.3, sliding_window=3, sliding_window_pattern=2),
}
LENGTHS = (5, 4, 2)  # three examples packed into one row of 13 slots, the last two padding


def alone(params, ids: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Logits [len(ids), V] of one example in a row of its own."""
    tokens = jnp.asarray(ids)[None]
    positions = jnp.arange(len(ids))[None]
    logits, _ = forward(params, tokens, positions, jnp.ones(tokens.shape, bool), cfg)
    return np.asarray(logits[0])


@pytest.mark.parametrize("case", list(CASES))
def test_each_packed_example_sees_only_itself(case):
    cfg = CASES[case]
    params = init_params(cfg, jax.random.key(0))
    examples = [np.asarray(jax.random.randint(jax.random.key(index + 1), (length,), 1, cfg.vocab_size))
                for index, length in enumerate(LENGTHS)]
    width = sum(LENGTHS) + 2
    tokens = np.zeros(width, np.int32)
    segments = np.zeros(width, np.int32)
    positions = np.zeros(width, np.int32)
    start = 0
    for segment, ids in enumerate(examples, start=1):
        tokens[start:start + len(ids)], segments[start:start + len(ids)] = ids, segment
        positions[start:start + len(ids)] = np.arange(len(ids))
        start += len(ids)
    packed, _ = forward(params, jnp.asarray(tokens)[None], jnp.asarray(positions)[None], jnp.asarray(segments > 0)[None],
                        cfg, segment_ids=jnp.asarray(segments)[None])
    packed = np.asarray(packed[0])
    start = 0
    for ids in examples:
        expected = alone(params, ids, cfg)
        # The same sums, taken over rows of other lengths: a few roundings per reduction and layer.
        tolerance = cfg.num_layers * cfg.intermediate_size * np.finfo(np.float32).eps * np.abs(expected).max()
        np.testing.assert_allclose(packed[start:start + len(ids)], expected, rtol=0, atol=tolerance)
        start += len(ids)
    assert np.all(np.isfinite(packed))


def test_a_packed_row_differs_from_one_long_example():
    """Without its segment ids the same row is one causal sequence: the second example's logits change."""
    cfg = CASES["global"]
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 8), 1, cfg.vocab_size)
    segments = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 2]])
    positions = jnp.asarray([[0, 1, 2, 3, 0, 1, 2, 3]])
    valid = jnp.ones((1, 8), bool)
    packed, _ = forward(params, tokens, positions, valid, cfg, segment_ids=segments)
    joined, _ = forward(params, tokens, positions, valid, cfg)
    assert np.abs(np.asarray(packed - joined)[0, 4:]).max() > 1e-2


def test_segment_ids_are_refused_with_a_cache():
    cfg = CASES["global"]
    params = init_params(cfg, jax.random.key(0))
    tokens = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="without a KV cache"):
        forward(params, tokens, jnp.arange(4)[None], jnp.ones((1, 8), bool), cfg, cache=init_cache(cfg, 1, 8),
                segment_ids=jnp.ones((1, 4), jnp.int32))
