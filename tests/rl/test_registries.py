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
