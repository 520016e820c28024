"""Every policy loss x loss_type on rows sharded over 8 simulated CPU devices against one device, float64.

Run as its own process (the device count is fixed when JAX starts): python tests/rl/scripts/sharded_losses.py.
Prints one line per case and exits 1 if any differs by more than float64 reduction-order rounding."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from rlreason.models.logprobs import entropy_of, logprobs_of  # noqa: E402
from rlreason.rl.losses import LOSS_AGGREGATIONS, LossSettings, make_token_loss  # noqa: E402

VARIANTS = [
    ("ppo_clip", "token", LossSettings(0.2, 0.28, 3.0, 0.2)),
    ("ppo_clip", "sequence", LossSettings(0.03, 0.04, 0.0, 0.2)),
    ("ppo_clip", "sequence_token", LossSettings(0.03, 0.04, 0.0, 0.2)),
    ("cispo", "token", LossSettings(0.2, 1.1, 0.0, 0.2)),
    ("dppo_tv", "token", LossSettings(0.2, 0.2, 0.0, 0.03)),
    ("dppo_kl", "token", LossSettings(0.2, 0.2, 0.0, 0.005)),
]
ROWS, LENGTH, VOCAB = 16, 7, 5


def batch(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (ROWS, LENGTH, VOCAB))
    tokens = rng.integers(0, VOCAB, (ROWS, LENGTH))
    old = np.minimum(rng.normal(-1.6, 0.4, (ROWS, LENGTH)), -1e-3)
    ref = rng.normal(-1.6, 0.4, (ROWS, LENGTH))
    adv = rng.normal(0, 1, ROWS)
    mask = (np.arange(LENGTH)[None] < rng.integers(1, LENGTH + 1, ROWS)[:, None]).astype(np.float64)
    return logits, (tokens, old, ref, adv, rng.uniform(0.5, 2, (ROWS, LENGTH)), mask)


def loss_fn(policy, level, settings, loss_type):
    token_loss = make_token_loss(policy, level, "k3", settings, 0.04, 0.01)
    aggregation = LOSS_AGGREGATIONS[loss_type]

    def loss(logits, tokens, old, ref, adv, weights, mask):
        terms = token_loss(logprobs_of(logits, tokens, 1.0), entropy_of(logits, 1.0), old, ref, adv, weights, mask)
        return aggregation.numerator(terms.loss, mask) / aggregation.denominator(mask, jnp.sum(mask), 1)

    return jax.jit(jax.value_and_grad(loss))


def main() -> int:
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert len(jax.devices()) == 8
    rows = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))  # noqa: E731
    failures = 0
    for index, (policy, level, settings) in enumerate(VARIANTS):
        for loss_type in LOSS_AGGREGATIONS:
            logits, inputs = batch(index)
            fn = loss_fn(policy, level, settings, loss_type)
            one_value, one_grad = fn(jax.device_put(logits, jax.devices()[0]),
                                     *(jax.device_put(x, jax.devices()[0]) for x in inputs))
            value, grad = fn(rows(logits), *(rows(x) for x in inputs))
            assert len(grad.sharding.device_set) == 8
            ok = (np.allclose(value, one_value, rtol=1e-12, atol=1e-15)
                  and np.allclose(grad, one_grad, rtol=1e-10, atol=1e-15))
            failures += not ok
            print(f"{policy}/{level}/{loss_type}: value {float(value):.12g} vs {float(one_value):.12g}, "
                  f"max grad diff {float(np.abs(np.asarray(grad) - np.asarray(one_grad)).max()):.3g} "
                  f"{'ok' if ok else 'DIFFERS'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
