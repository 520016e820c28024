"""Each variant knob of GRPOConfig allows exactly its registry's names, and an unknown one is refused at load with
the list of registered names."""

import typing

import pytest

from rlreason.config import ConfigError, GRPOConfig, load_config
from rlreason.rl.advantages import ADVANTAGE_ESTIMATORS, REWARD_SCALES
from rlreason.rl.losses import IMPORTANCE_RATIOS, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES
from rlreason.rl.off_policy import OFF_POLICY_CORRECTIONS

REGISTRIES = {
    "advantage_estimator": ADVANTAGE_ESTIMATORS,
    "scale_rewards": REWARD_SCALES,
    "policy_loss": POLICY_LOSSES,
    "importance_sampling_level": IMPORTANCE_RATIOS,
    "kl_estimator": KL_ESTIMATORS,
    "loss_type": LOSS_AGGREGATIONS,
    "off_policy_correction": OFF_POLICY_CORRECTIONS,
}


@pytest.mark.parametrize("knob", sorted(REGISTRIES))
def test_config_choices_are_the_registered_names(knob):
    allowed = typing.get_args(typing.get_type_hints(GRPOConfig)[knob])
    assert allowed == tuple(REGISTRIES[knob]), f"grpo.{knob} and its registry list different names"


@pytest.mark.parametrize("knob", sorted(REGISTRIES))
def test_unknown_name_is_refused_with_the_registered_names(knob):
    names = ", ".join(repr(name) for name in REGISTRIES[knob])
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"grpo.{knob}=no_such_variant"])
    assert f"config key 'grpo.{knob}' got 'no_such_variant'; allowed values: {names}" in str(error.value)


@pytest.mark.parametrize("overrides,message", [
    (["grpo.policy_loss=cispo"], "config key 'grpo.epsilon_high' is CISPO's cap on the ratio and must be > 1"),
    (["grpo.top_entropy_quantile=0.2"], "set grpo.recompute_old_logprobs=true"),
    (["grpo.off_policy_correction=token_truncate"], "config key 'grpo.off_policy_correction' compares the sampler's"),
    (["grpo.sync_ref_model=true"], "config key 'grpo.sync_ref_model' needs a reference model"),
    (["grpo.dual_clip_c=0.5"], "config key 'grpo.dual_clip_c' must be 0 (off) or > 1"),
    (["grpo.dual_clip_c=3", "grpo.policy_loss=dppo_tv"], "applies to grpo.policy_loss='ppo_clip' only"),
    (["grpo.overlong_buffer_length=64"], "config key 'grpo.overlong_buffer_length' must be < "
                                         "sampling.max_completion_length (64)"),
    (["grpo.recompute_old_logprobs=true", "grpo.off_policy_mask_low=1.2"], "must bracket 1"),
])
def test_knob_combinations_that_cannot_work_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)
