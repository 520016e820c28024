"""Where mode `manual` gets the coordinator, process count and id: the config first, then the environment; and
a process that raises in a multi-process run exits at once; a CPU device count asked for too late is named."""

from __future__ import annotations

import sys
import time

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


@pytest.mark.multiprocess
def test_a_process_that_raises_ends_the_run_at_once(run_python):
    """Without the exit hook the failed process waits up to 5 minutes at the runtime's shutdown barrier for a
    peer that waits for it, and the launcher's 60 s timeout (exit 124) ends the run instead; with it, about 3 s."""
    start = time.monotonic()
    result = run_python(["launch/local.py", "--num-processes", "2", "--devices-per-process", "1", "--timeout", "60",
                         "--heartbeat-timeout", "10", "--program",
                         f"{sys.executable} tests/parallel/scripts/fail_on_one_process.py", "configs/demo_cpu.yaml"],
                        timeout=90, check=False)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[p1] RuntimeError: process 1 failed on purpose" in result.stdout
    assert time.monotonic() - start < 30


LATE_DEVICE_COUNT = """
import jax
from rlreason.config import ConfigError, DistributedConfig
from rlreason.parallel.distributed import initialize
started = jax.device_count()  # computing starts the backend: 1 CPU device, or what XLA_FLAGS says
initialize(DistributedConfig(local_device_count=started))  # what it already has: nothing to change
try:
    initialize(DistributedConfig(local_device_count=started + 1))
except ConfigError as error:
    print(started, error)
"""


def test_a_device_count_asked_for_after_jax_started_is_a_config_error(run_python):
    result = run_python(["-c", LATE_DEVICE_COUNT], timeout=60)
    started, _, message = result.stdout.partition(" ")
    assert message.startswith(f"config key distributed.local_device_count={int(started) + 1}: this process already "
                              f"computed with JAX on {started} CPU device(s)"), result.stdout + result.stderr
    assert "call rlreason.parallel.distributed.initialize(cfg.distributed) before" in message
