"""The PRM head and loss against a float64 numpy reference written from the formula, and a PRM that learns a
labelled batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlreason.config import ModelConfig
from rlreason.models.transformer import forward_hidden, init_params, positions_from_mask
from rlreason.search.prm import init_head, prm_loss, step_logits

CFG = ModelConfig(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=40, init_std=0.4)
TOKENS = np.array([[0, 0, 5, 6, 7, 8, 9, 10], [3, 4, 11, 12, 13, 14, 15, 16]])
MASK = TOKENS != 0
# Steps of the completion part (columns 4..7): row 0 ends steps at 5 and 7, row 1 at 4, 6 and 7.
STEP_END = np.zeros((2, 8), bool)
STEP_END[0, [5, 7]] = True
STEP_END[1, [4, 6, 7]] = True
STEP_OF = np.array([[-1, -1, -1, -1, 0, 0, 1, 1], [-1, -1, -1, -1, 0, 1, 1, 2]])
SOFT = np.array([[0.75, 0.0, np.nan], [0.2, np.nan, 1.0]])  # row 1's middle step has no label


def reference(params, head) -> tuple[np.ndarray, float]:
    """Logits and loss in float64 from the model's hidden states: RMSNorm, the linear head, BCE with soft
    targets averaged over labelled step ends."""
    hidden, _ = forward_hidden(params, jnp.asarray(TOKENS), positions_from_mask(jnp.asarray(MASK)),
                               jnp.asarray(MASK), CFG)
    h = np.asarray(hidden, np.float64)
    normed = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + CFG.rms_norm_eps) * np.asarray(params["final_norm"])
    logits = normed @ np.asarray(head["w"], np.float64) + float(head["b"])
    losses = []
    for b in range(2):
        for t in range(8):
            if STEP_END[b, t] and np.isfinite(SOFT[b, STEP_OF[b, t]]):
                p, y = 1 / (1 + np.exp(-logits[b, t])), SOFT[b, STEP_OF[b, t]]
                losses.append(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return logits, float(np.mean(losses))


def test_head_and_loss_match_the_float64_reference():
    params = init_params(CFG, jax.random.key(0))
    head = {"w": jax.random.normal(jax.random.key(1), (CFG.hidden_size,)) * 0.3, "b": jnp.float32(-0.2)}
    logits = step_logits(params, head, TOKENS, MASK, CFG)
    want_logits, want_loss = reference(params, head)
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-5, atol=1e-5)
    loss = prm_loss(logits, STEP_END, STEP_OF, SOFT)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    # A zero head scores every step 0.5: the loss is log 2 whatever the soft label.
    zero = step_logits(params, init_head(CFG), TOKENS, MASK, CFG)
    np.testing.assert_allclose(float(prm_loss(zero, STEP_END, STEP_OF, SOFT)), np.log(2), rtol=1e-6)


def test_a_prm_fits_its_labels():
    params = {"model": init_params(CFG, jax.random.key(0)), "head": init_head(CFG)}
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)

    def loss_fn(p):
        return prm_loss(step_logits(p["model"], p["head"], TOKENS, MASK, CFG), STEP_END, STEP_OF, SOFT)

    @jax.jit
    def update(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = optimizer.update(grads, s)
        return optax.apply_updates(p, updates), s, loss

    for _ in range(150):
        params, state, _ = update(params, state)
    probs = jax.nn.sigmoid(step_logits(params["model"], params["head"], TOKENS, MASK, CFG))
    # The soft-label optimum is the label itself.
    np.testing.assert_allclose(np.asarray([probs[0, 5], probs[0, 7], probs[1, 4], probs[1, 7]]),
                               [0.75, 0.0, 0.2, 1.0], atol=0.05)
