"""Every policy loss, importance-ratio level, KL estimator and aggregation against a float64 numpy implementation
written from shared ALGORITHMS.md: loss values and gradients.

The project's loss runs in float64 (jax.enable_x64) on logits, so that entropy and log-softmax are inside the
differentiated function; the reference's gradient is a central finite difference over the logits. A stop-gradient
sg(x) in a formula is written as a second argument of the reference that the difference holds fixed, which is
what sg means. Values agree to float64 rounding (rtol 1e-9). The central difference with step h = 1e-6 has a
truncation error ~h^2 = 1e-12 and a rounding error ~eps * |loss| / h = 1e-16 * O(1) / 1e-6 = 1e-10, so gradients
are compared with rtol 1e-6 plus atol GRAD_ATOL = 1e-9; both hold on any CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.models.logprobs import entropy_of, logprobs_of
from rlreason.rl.losses import LOSS_AGGREGATIONS, LossSettings, make_token_loss

ROWS, LENGTH, VOCAB = 12, 7, 5
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
# (name, policy_loss, importance_sampling_level, LossSettings): each exercises its clip, cap or mask on the batch.
VARIANTS = [
    ("ppo_clip", "ppo_clip", "token", LossSettings(0.2, 0.28, 0.0, 0.2)),
    ("dual_clip", "ppo_clip", "token", LossSettings(0.2, 0.2, 1.5, 0.2)),
    ("gspo", "ppo_clip", "sequence", LossSettings(0.03, 0.04, 0.0, 0.2)),
    ("gspo_token", "ppo_clip", "sequence_token", LossSettings(0.03, 0.04, 0.0, 0.2)),
    ("cispo", "cispo", "token", LossSettings(0.2, 1.1, 0.0, 0.2)),
    ("dppo_tv", "dppo_tv", "token", LossSettings(0.2, 0.2, 0.0, 0.03)),
    ("dppo_kl", "dppo_kl", "token", LossSettings(0.2, 0.2, 0.0, 0.005)),
]
KL_ESTIMATOR_CYCLE = ["k1", "k2", "k3"]
GRAD_ATOL = 1e-9


# ---- the reference, float64 numpy, from the formulas --------------------------------------------------------


def np_log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_logp_entropy(logits, tokens):
    log_probs = np_log_softmax(logits)
    logp = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    return logp, -(np.exp(log_probs) * log_probs).sum(-1)


def np_ratio(level, logp, logp_sg, old, mask):
    def sequence_log_ratio(values):
        return ((mask * (values - old)).sum(-1) / np.maximum(mask.sum(-1), 1))[:, None] * np.ones_like(values)

    if level == "token":
        return np.exp(logp - old)
    if level == "sequence":  # GSPO: s_i = exp(mean_t m (logp - old))
        return np.exp(sequence_log_ratio(logp))
    return np.exp(sequence_log_ratio(logp_sg)) * np.exp(logp - logp_sg)  # GSPO-token: sg(s_i) exp(logp - sg(logp))


def np_policy(policy, ratio, ratio_sg, logp, logp_sg, old, adv, s: LossSettings):
    """Per-token policy loss and the (low, high) clip/cap/mask flags."""
    a = adv[:, None] * np.ones_like(logp)
    if policy == "ppo_clip":
        loss = -np.minimum(ratio * a, np.clip(ratio, 1 - s.epsilon, 1 + s.epsilon_high) * a)
        if s.dual_clip_c:
            loss = np.where(a < 0, np.minimum(loss, -s.dual_clip_c * a), loss)
        return loss, (ratio < 1 - s.epsilon) & (a < 0), (ratio > 1 + s.epsilon_high) & (a > 0)
    if policy == "cispo":  # -sg(min(r, eps_max)) A logp
        capped = ratio_sg > s.epsilon_high
        return -np.minimum(ratio_sg, s.epsilon_high) * a * logp, capped & (a < 0), capped & (a > 0)
    p, p_old = np.exp(logp_sg), np.exp(old)
    if policy == "dppo_tv":
        up, down = p - p_old > s.dppo_delta, p - p_old < -s.dppo_delta
    else:  # binary KL(p_old || p)
        kl = p_old * np.log(p_old / p) + (1 - p_old) * np.log((1 - p_old) / (1 - p))
        up, down = (kl > s.dppo_delta) & (p > p_old), (kl > s.dppo_delta) & (p < p_old)
    dropped_high, dropped_low = up & (a > 0), down & (a < 0)
    return np.where(dropped_high | dropped_low, 0.0, -ratio * a), dropped_low, dropped_high


def np_kl(estimator, logp, ref):
    return {"k1": logp - ref, "k2": 0.5 * (logp - ref) ** 2,
            "k3": np.exp(ref - logp) - (ref - logp) - 1}[estimator]


def np_aggregate(loss_type, token_losses, mask, generation_tokens, num_updates):
    """The ALGORITHMS.md table; dapo per TRL: an update divides by generation tokens / updates per generation."""
    total = (token_losses * mask).sum()
    if loss_type == "grpo":
        return np.mean((token_losses * mask).sum(-1) / np.maximum(mask.sum(-1), 1))
    if loss_type == "bnpo":
        return total / max(mask.sum(), 1)
    if loss_type == "dr_grpo":
        return total / mask.size
    return total / (generation_tokens / num_updates)


def np_loss(logits, logits_sg, batch, variant, loss_type, beta, entropy_coef, generation_tokens=None,
            num_updates=1):
    _, policy, level, settings = variant
    tokens, old, ref, adv, weights, mask = (batch[k] for k in ("tokens", "old", "ref", "adv", "weights", "mask"))
    logp, entropy = np_logp_entropy(logits, tokens)
    logp_sg, _ = np_logp_entropy(logits_sg, tokens)
    ratio, ratio_sg = np_ratio(level, logp, logp_sg, old, mask), np_ratio(level, logp_sg, logp_sg, old, mask)
    policy_loss, low, high = np_policy(policy, ratio, ratio_sg, logp, logp_sg, old, adv, settings)
    per_token = weights * policy_loss - entropy_coef * entropy
    if beta:
        per_token = per_token + beta * np_kl(batch["kl_estimator"], logp, ref)
    tokens_total = mask.sum() if generation_tokens is None else generation_tokens
    return np_aggregate(loss_type, per_token, mask, tokens_total, num_updates), (low * mask).sum(), (high * mask).sum()


def np_gradient(logits, batch, variant, loss_type, beta, entropy_coef, step=1e-6, **aggregation):
    grad = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        shift = np.zeros_like(logits)
        shift[index] = step
        plus = np_loss(logits + shift, logits, batch, variant, loss_type, beta, entropy_coef, **aggregation)[0]
        minus = np_loss(logits - shift, logits, batch, variant, loss_type, beta, entropy_coef, **aggregation)[0]
        grad[index] = (plus - minus) / (2 * step)
    return grad


# ---- the project's loss ------------------------------------------------------------------------------------


def project_loss(logits, batch, variant, loss_type, beta, entropy_coef, rows=None, generation_tokens=None,
                 num_updates=1):
    """Σ numerator(rows chunk) / denominator(rows), over the given row chunks (None: all rows in one)."""
    _, policy, level, settings = variant
    token_loss = make_token_loss(policy, level, batch["kl_estimator"], settings, beta, entropy_coef)
    aggregation = LOSS_AGGREGATIONS[loss_type]
    mask = jnp.asarray(batch["mask"])
    tokens_total = jnp.sum(mask) if generation_tokens is None else generation_tokens
    denominator = aggregation.denominator(mask, tokens_total, num_updates)
    numerator = 0.0
    for chunk in rows or [np.arange(len(mask))]:
        part = {key: jnp.asarray(value)[chunk] for key, value in batch.items() if key != "kl_estimator"}
        logp, entropy = logprobs_of(logits[chunk], part["tokens"], 1.0), entropy_of(logits[chunk], 1.0)
        terms = token_loss(logp, entropy, part["old"], part["ref"], part["adv"], part["weights"], part["mask"])
        numerator = numerator + aggregation.numerator(terms.loss, part["mask"])
    return numerator / denominator


def random_batch(seed, kl_estimator="k3", weighted=True):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (ROWS, LENGTH, VOCAB))
    tokens = rng.integers(0, VOCAB, (ROWS, LENGTH))
    logp, _ = np_logp_entropy(logits, tokens)
    old = np.minimum(logp + rng.normal(0, 0.3, logp.shape), -1e-3)  # a probability, so below 0
    ref = logp + rng.normal(0, 0.2, logp.shape)
    adv = rng.normal(0, 1, ROWS)
    adv[4:8] = 0.0  # a group whose rewards were all equal
    adv[1] = 0.0  # an unscored completion
    lengths = rng.integers(1, LENGTH + 1, ROWS)  # uneven
    lengths[9] = 0  # a completion the loss mask drops entirely (truncated, masked)
    mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.float64)
    weights = rng.uniform(0.5, 2.0, logp.shape) if weighted else np.ones_like(logp)
    return logits, {"tokens": tokens, "old": old, "ref": ref, "adv": adv, "weights": weights, "mask": mask,
                    "kl_estimator": kl_estimator}


CASES = [(variant, loss_type) for variant in VARIANTS for loss_type in LOSS_TYPES]


@pytest.mark.parametrize("variant,loss_type", CASES, ids=[f"{v[0]}-{t}" for v, t in CASES])
def test_loss_and_gradient_match_the_reference(variant, loss_type):
    index = CASES.index((variant, loss_type))
    logits, batch = random_batch(index, KL_ESTIMATOR_CYCLE[index % 3])
    beta, entropy_coef = 0.04, 0.01
    expected, low, high = np_loss(logits, logits, batch, variant, loss_type, beta, entropy_coef)
    assert low + high > 0, "the batch should exercise the variant's clip / cap / mask"
    with jax.enable_x64(True):
        value, grad = jax.value_and_grad(project_loss)(jnp.asarray(logits), batch, variant, loss_type, beta,
                                                       entropy_coef)
    np.testing.assert_allclose(value, expected, rtol=1e-9, atol=1e-12)
    expected_grad = np_gradient(logits, batch, variant, loss_type, beta, entropy_coef)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=GRAD_ATOL)
    assert np.all(np.asarray(grad)[batch["mask"] == 0] == 0), "masked tokens must not get a gradient"


@pytest.mark.parametrize("variant", VARIANTS[:2], ids=lambda v: v[0])
def test_beta_zero_needs_no_reference(variant):
    logits, batch = random_batch(50, weighted=False)
    expected = np_loss(logits, logits, batch, variant, "bnpo", 0.0, 0.0)[0]
    batch["ref"] = np.full_like(batch["ref"], np.nan)  # never read
    with jax.enable_x64(True):
        value = project_loss(jnp.asarray(logits), batch, variant, "bnpo", 0.0, 0.0)
    np.testing.assert_allclose(value, expected, rtol=1e-9)


@pytest.mark.parametrize("variant,loss_type", CASES, ids=[f"{v[0]}-{t}" for v, t in CASES])
def test_micro_batches_give_the_single_batch_loss_and_gradient(variant, loss_type):
    logits, batch = random_batch(100 + CASES.index((variant, loss_type)))
    with jax.enable_x64(True):
        whole = jax.value_and_grad(project_loss)(jnp.asarray(logits), batch, variant, loss_type, 0.04, 0.01)
        for chunks in (2, 3, 4):
            rows = np.array_split(np.arange(ROWS), chunks)
            split = jax.value_and_grad(project_loss)(jnp.asarray(logits), batch, variant, loss_type, 0.04, 0.01, rows)
            np.testing.assert_allclose(split[0], whole[0], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(split[1], whole[1], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("variant,loss_type", CASES, ids=[f"{v[0]}-{t}" for v, t in CASES])
def test_minibatch_updates_against_the_whole_batch(variant, loss_type):
    """Two optimizer updates of half the rows each, at the same params: grpo, dr_grpo and dapo (TRL's dapo: each
    update divides by half the generation tokens) give losses and gradients that average to the one-update value;
    bnpo is by definition the token mean of each update's own rows."""
    logits, batch = random_batch(200 + CASES.index((variant, loss_type)))
    generation_tokens = batch["mask"].sum()
    halves = [np.arange(ROWS // 2), np.arange(ROWS // 2, ROWS)]
    values, grads = [], []
    with jax.enable_x64(True):
        for half in halves:
            part = {key: value[half] if isinstance(value, np.ndarray) else value for key, value in batch.items()}
            value, grad = jax.value_and_grad(project_loss)(jnp.asarray(logits[half]), part, variant, loss_type, 0.04,
                                                           0.01, generation_tokens=generation_tokens, num_updates=2)
            if loss_type == "bnpo":
                np.testing.assert_allclose(value, np_loss(logits[half], logits[half], part, variant, "bnpo", 0.04,
                                                          0.01)[0], rtol=1e-9)
            values.append(value)
            grads.append(np.asarray(grad))
    if loss_type != "bnpo":
        whole = np_loss(logits, logits, batch, variant, loss_type, 0.04, 0.01)[0]
        np.testing.assert_allclose(np.mean(values), whole, rtol=1e-9, atol=1e-12)
        # The whole-batch gradient as checked against the finite difference above, for every variant.
        with jax.enable_x64(True):
            whole_grad = jax.grad(project_loss)(jnp.asarray(logits), batch, variant, loss_type, 0.04, 0.01)
        np.testing.assert_allclose(np.concatenate(grads) / 2, whole_grad, rtol=1e-10, atol=1e-15)


def test_clipping_flags_follow_the_sign_of_the_advantage():
    """Hand-computed: ratios 1.5 and 0.5 against eps = 0.2, eps_high = 0.28."""
    token_loss = make_token_loss("ppo_clip", "token", "k3", LossSettings(0.2, 0.28, 0.0, 0.2), 0.0, 0.0)
    logp, ones = jnp.log(jnp.asarray([[1.5, 0.5, 1.5, 0.5]])), jnp.ones((1, 4))
    positive = token_loss(logp, None, jnp.zeros((1, 4)), None, jnp.asarray([1.0]), ones, ones)
    assert positive.high_clipped.tolist() == [[True, False, True, False]] and not positive.low_clipped.any()
    # A clipped positive-advantage token contributes -(1 + eps_high) * A; the unclipped 0.5 contributes -0.5.
    np.testing.assert_allclose(positive.loss[0], [-1.28, -0.5, -1.28, -0.5], rtol=1e-6)
    negative = token_loss(logp, None, jnp.zeros((1, 4)), None, jnp.asarray([-1.0]), ones, ones)
    assert negative.low_clipped.tolist() == [[False, True, False, True]]
    np.testing.assert_allclose(negative.loss[0], [1.5, 0.8, 1.5, 0.8], rtol=1e-6)
    # Dual clip at c = 1.2 caps the negative-advantage loss 1.5 at 1.2 * |A|.
    dual = make_token_loss("ppo_clip", "token", "k3", LossSettings(0.2, 0.28, 1.2, 0.2), 0.0, 0.0)
    np.testing.assert_allclose(dual(logp, None, jnp.zeros((1, 4)), None, jnp.asarray([-1.0]), ones, ones).loss[0],
                               [1.2, 0.8, 1.2, 0.8], rtol=1e-6)


def test_on_policy_loss_is_zero_but_gradient_is_not():
    """mu = 1, beta = 0, loss_type grpo: old = sg(logp), so every ratio is 1 and the loss is -mean(A) = 0 for
    centred advantages, yet the gradient is the policy gradient A * grad(logp)."""
    logits, batch = random_batch(5, weighted=False)
    adv = batch["adv"] - batch["adv"].mean()
    token_loss = make_token_loss("ppo_clip", "token", "k3", LossSettings(0.2, 0.2, 0.0, 0.2), 0.0, 0.0)
    mask = jnp.asarray(batch["mask"], jnp.float32)
    mask = mask.at[9, 0].set(1.0)  # every row has a token, so the per-row means are plain -A_i

    def loss(logits):
        logp = logprobs_of(logits, jnp.asarray(batch["tokens"]), 1.0)
        terms = token_loss(logp, None, jax.lax.stop_gradient(logp), None, jnp.asarray(adv, jnp.float32),
                           jnp.ones_like(logp), mask)
        return LOSS_AGGREGATIONS["grpo"].numerator(terms.loss, mask) / LOSS_AGGREGATIONS["grpo"].denominator(
            mask, jnp.sum(mask), 1)

    value, grad = jax.value_and_grad(loss)(jnp.asarray(logits, jnp.float32))
    assert abs(float(value)) < 1e-6
    assert float(jnp.abs(grad).max()) > 1e-3
