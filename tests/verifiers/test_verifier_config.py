"""The verifier bounds in the config: defaults, and out-of-range values refused with the key named."""

from __future__ import annotations

import pytest

from rlreason.config import Config, ConfigError, from_dict


def test_defaults():
    grpo = Config().grpo
    assert (grpo.verifier_timeout_s, grpo.verifier_batch_deadline_s, grpo.verifier_memory_mb) == (5.0, 2.0, 1024)


@pytest.mark.parametrize("key,value,message", [
    ("verifier_batch_deadline_s", 0.0, "must be > 0 seconds, got 0.0"),
    ("verifier_timeout_s", -1.0, "must be > 0 seconds, got -1.0"),
    ("verifier_memory_mb", 100, "must be >= 512"),
])
def test_out_of_range_bounds_are_refused_with_the_key_named(key, value, message):
    with pytest.raises(ConfigError, match=rf"config key 'grpo.{key}' {message}"):
        from_dict({"grpo": {key: value}})
