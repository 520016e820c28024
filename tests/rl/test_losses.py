"""Per-token losses and every loss_type's aggregation against a numpy implementation of the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.rl.losses import kl_estimate, loss_denominator, loss_numerator, token_loss

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]


def numpy_loss(logp, old, ref, adv, mask, loss_type, eps, eps_high, beta):
    ratio = np.exp(np.clip(logp - old, -20, 20))
    a = adv[:, None]
    per_token = -np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps_high) * a)
    if beta:
        per_token = per_token + beta * (np.exp(ref - logp) - (ref - logp) - 1)
    if loss_type == "grpo":
        return np.mean([(per_token[i] * mask[i]).sum() / mask[i].sum() for i in range(len(mask))])
    if loss_type in ("bnpo", "dapo"):
        return (per_token * mask).sum() / mask.sum()
    return (per_token * mask).sum() / (mask.shape[0] * mask.shape[1])  # dr_grpo


def random_batch(seed, rows=12, length=9):
    rng = np.random.default_rng(seed)
    logp = rng.normal(-2, 0.5, (rows, length)).astype(np.float32)
    old = (logp + rng.normal(0, 0.3, (rows, length))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.2, (rows, length))).astype(np.float32)
    adv = rng.normal(0, 1, rows).astype(np.float32)
    adv[:4] = 0.0  # a group whose rewards were all equal
    lengths = rng.integers(1, length + 1, rows)  # uneven lengths
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
    return logp, old, ref, adv, mask


def aggregate(batch, loss_type, eps, eps_high, beta, chunks):
    """Loss from `chunks` row slices summed as numerators over one whole-batch denominator."""
    logp, old, ref, adv, mask = batch
    terms = token_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(ref), eps, eps_high,
                       beta, "k3")
    denominator = loss_denominator(jnp.asarray(mask), loss_type, jnp.sum(mask), 1)
    rows = np.array_split(np.arange(len(mask)), chunks)
    return sum(loss_numerator(terms.loss[r], jnp.asarray(mask[r]), loss_type) for r in rows) / denominator


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_loss_types_match_numpy(loss_type, beta, eps_high):
    batch = random_batch(1)
    expected = numpy_loss(*batch, loss_type, 0.2, eps_high, beta)
    np.testing.assert_allclose(aggregate(batch, loss_type, 0.2, eps_high, beta, 1), expected, rtol=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_sum_to_the_single_batch_value(loss_type):
    batch = random_batch(2)
    whole = aggregate(batch, loss_type, 0.2, 0.28, 0.04, 1)
    for chunks in (2, 3, 4):
        np.testing.assert_allclose(aggregate(batch, loss_type, 0.2, 0.28, 0.04, chunks), whole, rtol=1e-6)


def test_dapo_update_batches_share_the_generation_token_count():
    _, _, _, _, mask = random_batch(3)
    total = mask.sum()
    halves = [loss_denominator(jnp.asarray(mask[:6]), "dapo", total, 2), loss_denominator(jnp.asarray(mask[6:]),
                                                                                          "dapo", total, 2)]
    np.testing.assert_allclose(halves, [total / 2, total / 2])
    np.testing.assert_allclose(loss_denominator(jnp.asarray(mask[:6]), "bnpo", total, 2), mask[:6].sum())


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_match_their_formulas(estimator):
    rng = np.random.default_rng(4)
    logp, ref = rng.normal(-2, 1, 50), rng.normal(-2, 1, 50)
    expected = {"k1": logp - ref, "k2": 0.5 * (logp - ref) ** 2,
                "k3": np.exp(ref - logp) - (ref - logp) - 1}[estimator]
    np.testing.assert_allclose(kl_estimate(jnp.asarray(logp), jnp.asarray(ref), estimator), expected, rtol=1e-4,
                               atol=1e-5)
    # k3 is non-negative and zero only when the policies agree on the token.
    if estimator == "k3":
        assert np.all(np.asarray(kl_estimate(jnp.asarray(logp), jnp.asarray(ref), "k3")) >= 0)


def test_clipping_flags_follow_the_sign_of_the_advantage():
    logp = jnp.log(jnp.asarray([[1.5, 0.5, 1.5, 0.5]]))
    terms = token_loss(logp, jnp.zeros((1, 4)), jnp.asarray([1.0]), None, 0.2, 0.28, 0.0, "k3")
    assert terms.high_clipped.tolist() == [[True, False, True, False]]
    assert not terms.low_clipped.any()
    terms = token_loss(logp, jnp.zeros((1, 4)), jnp.asarray([-1.0]), None, 0.2, 0.28, 0.0, "k3")
    assert terms.low_clipped.tolist() == [[False, True, False, True]]
    # A clipped positive-advantage token contributes -(1 + eps_high) * A and no gradient.
    np.testing.assert_allclose(token_loss(logp, jnp.zeros((1, 4)), jnp.asarray([1.0]), None, 0.2, 0.28, 0.0,
                                          "k3").loss[0, 0], -1.28, rtol=1e-6)


def test_on_policy_loss_is_zero_but_gradient_is_not():
    """mu = 1, beta = 0, loss_type grpo: old = logp, so every ratio is 1 and the loss is -mean(A) = 0 for centred
    advantages, yet the gradient is
    the policy gradient A * grad(logp)."""
    _, _, _, adv, mask = random_batch(5)
    adv = adv - adv.mean()
    logits = jnp.asarray(np.random.default_rng(6).normal(size=(12, 9, 5)), jnp.float32)
    tokens = jnp.asarray(np.random.default_rng(7).integers(0, 5, (12, 9)))

    def loss(logits):
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
        terms = token_loss(logp, jax.lax.stop_gradient(logp), jnp.asarray(adv), None, 0.2, 0.2, 0.0, "k3")
        return loss_numerator(terms.loss, jnp.asarray(mask), "grpo") / loss_denominator(
            jnp.asarray(mask), "grpo", 0.0, 1)

    value, grad = jax.value_and_grad(loss)(logits)
    assert abs(float(value)) < 1e-6
    assert float(jnp.abs(grad).max()) > 1e-3
