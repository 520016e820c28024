"""grpo.scoring=jax: the step scored by the token-level verifiers inside the program gives the same rewards,
metrics and update as the host-callback verifiers on the same samples, and holds no host callback."""

import jax
import numpy as np

from rlreason.train.loop import build_trainer

from tiny_run import tiny_config

SHARED = ("reward", "accuracy", "accuracy_strict", "format_rate", "rewards/r1_format", "rewards/exact_answer",
          "frac_reward_zero_std")


def one_step(model_dir, scoring: str):
    trainer = build_trainer(tiny_config(f"train.model_dir={model_dir}", f"grpo.scoring={scoring}", "train.steps=1"))
    batch = trainer.prompt_batch(next(trainer.batches))
    program = trainer.step_fn.lower(trainer.state, batch).as_text()
    state, metrics, _ = trainer.step_fn(trainer.state, batch)
    return jax.device_get(state.params), {key: float(value) for key, value in jax.device_get(metrics).items()}, program


def test_token_scoring_equals_host_scoring(tiny_base_model):
    callback_params, callback, callback_program = one_step(tiny_base_model, "callback")
    token_params, token, token_program = one_step(tiny_base_model, "jax")
    assert "callback" in callback_program and "callback" not in token_program
    assert 0 < callback["rewards/r1_format"] < 1  # rewards vary: the comparison is not 0 = 0
    for key in SHARED:
        assert token[key] == callback[key], key
    assert "accuracy_lenient" in callback and "accuracy_lenient" not in token
    for token_leaf, callback_leaf in zip(jax.tree.leaves(token_params), jax.tree.leaves(callback_params)):
        np.testing.assert_allclose(token_leaf, callback_leaf, rtol=1e-5, atol=1e-7)
