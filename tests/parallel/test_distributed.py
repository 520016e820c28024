"""Where mode `manual` gets the coordinator, process count and id: the config first, then the environment."""

from __future__ import annotations

import pytest

from rlreason.config import ConfigError, DistributedConfig, load_config
from rlreason.parallel.distributed import Coordinates, manual_coordinates

ENVIRONMENT = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}


def test_config_fields_win_over_the_environment():
    cfg = DistributedConfig(mode="manual", coordinator_address="127.0.0.1:99", num_processes=2, process_id=1)
    assert manual_coordinates(cfg, ENVIRONMENT) == Coordinates("127.0.0.1:99", 2, 1)


def test_unset_fields_come_from_the_environment():
    cfg = DistributedConfig(mode="manual", num_processes=4)
    assert manual_coordinates(cfg, ENVIRONMENT) == Coordinates("10.0.0.1:1234", 4, 3)


def test_a_field_unset_everywhere_names_the_key_and_the_variable():
    with pytest.raises(ConfigError, match=r"'distributed.process_id' is unset and JAX_PROCESS_ID"):
        manual_coordinates(DistributedConfig(mode="manual", coordinator_address="h:1", num_processes=2), {})


@pytest.mark.parametrize("cfg, environ, message", [
    (DistributedConfig(coordinator_address="nohost", num_processes=2, process_id=0), {}, "host:port"),
    (DistributedConfig(coordinator_address="h:1", num_processes=2, process_id=2), {}, r"in \[0, num_processes=2\)"),
    (DistributedConfig(coordinator_address="h:1", process_id=0), {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
])
def test_invalid_coordinates_are_rejected(cfg, environ, message):
    with pytest.raises(ConfigError, match=message):
        manual_coordinates(cfg, environ)


def test_the_config_rejects_impossible_values_at_load_time():
    with pytest.raises(ConfigError, match="distributed.mode"):
        load_config(None, ["distributed.mode=auto"])
    with pytest.raises(ConfigError, match="distributed.local_device_count"):
        load_config(None, ["distributed.local_device_count=-2"])
