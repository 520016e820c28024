"""Start-up of the JAX distributed runtime for multi-process runs, and which process this is.

`initialize(cfg.distributed)` must run before any JAX computation (it may set the CPU device count, which JAX
fixes when its backend starts). Modes (see `DistributedConfig`):
  single   one process: nothing to start.
  cluster  `jax.distributed.initialize()` with no addresses: Cloud TPU VMs (the metadata server), GKE TPU
           JobSets, Slurm and Open MPI tell JAX the coordinator, the process count and this process's id.
  manual   the coordinator address, count and id from the config, else from JAX_COORDINATOR_ADDRESS,
           JAX_NUM_PROCESSES and JAX_PROCESS_ID (a scheduler that sets those per process).
A peer that stops sending heartbeats for `heartbeat_timeout_s` is declared dead and every other process
aborts, so a crashed host fails the run instead of hanging it. A process whose Python code raises exits at
once (see `exit_now_on_uncaught_exception`) so that its peers see it die.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import NamedTuple

import jax

from rlreason.config import ConfigError, DistributedConfig


class Coordinates(NamedTuple):
    coordinator_address: str
    num_processes: int
    process_id: int


def _from_config_or_environment(value, unset, key: str, variable: str, environ: Mapping[str, str], parse):
    if value != unset:
        return value
    if variable not in environ:
        raise ConfigError(f"config key 'distributed.{key}' is unset and {variable} is not in the environment; "
                          f"distributed.mode=manual needs one of them")
    try:
        return parse(environ[variable])
    except ValueError:
        raise ConfigError(f"environment variable {variable}={environ[variable]!r} (for config key "
                          f"'distributed.{key}') is not valid") from None


def manual_coordinates(cfg: DistributedConfig, environ: Mapping[str, str]) -> Coordinates:
    """Coordinator address, process count and id for mode `manual`: config fields first, then the environment."""
    coordinates = Coordinates(
        _from_config_or_environment(cfg.coordinator_address, "", "coordinator_address", "JAX_COORDINATOR_ADDRESS",
                                    environ, str),
        _from_config_or_environment(cfg.num_processes, 0, "num_processes", "JAX_NUM_PROCESSES", environ, int),
        _from_config_or_environment(cfg.process_id, -1, "process_id", "JAX_PROCESS_ID", environ, int))
    if ":" not in coordinates.coordinator_address:
        raise ConfigError(f"config key 'distributed.coordinator_address' must look like host:port, got "
                          f"{coordinates.coordinator_address!r}")
    if not 0 <= coordinates.process_id < coordinates.num_processes:
        raise ConfigError(f"config key 'distributed.process_id' must be in [0, num_processes="
                          f"{coordinates.num_processes}), got {coordinates.process_id}")
    return coordinates


def set_local_device_count(cfg: DistributedConfig) -> None:
    """Gives this process `cfg.local_device_count` CPU devices (0: JAX's default). JAX fixes the count when it
    first computes: a count asked for after that, and not already had, is a ConfigError naming the key."""
    if cfg.local_device_count and jax.config.jax_num_cpu_devices != cfg.local_device_count:
        try:
            jax.config.update("jax_num_cpu_devices", cfg.local_device_count)
        except RuntimeError:  # JAX's backend has started: it keeps the devices it started with
            started = len(jax.devices("cpu"))
            if started != cfg.local_device_count:
                raise ConfigError(f"config key distributed.local_device_count={cfg.local_device_count}: this process "
                                  f"already computed with JAX on {started} CPU device(s), and JAX sets the count only "
                                  f"before its first computation; call rlreason.parallel.distributed.initialize"
                                  f"(cfg.distributed) before anything else uses JAX (the rlreason command does)") \
                    from None


def initialize(cfg: DistributedConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Sets the CPU device count and joins the other processes as `cfg.mode` says. Safe to call twice."""
    set_local_device_count(cfg)
    if cfg.mode == "single" or jax.distributed.is_initialized():
        return
    timeouts = {"heartbeat_timeout_seconds": cfg.heartbeat_timeout_s,
                "initialization_timeout": cfg.initialization_timeout_s}
    if cfg.mode == "cluster":
        jax.distributed.initialize(**timeouts)
    else:
        jax.distributed.initialize(*manual_coordinates(cfg, environ), **timeouts)
    sys.excepthook = exit_now_on_uncaught_exception


def exit_now_on_uncaught_exception(exc_type, exc, traceback) -> None:
    """sys.excepthook of a multi-process run: print the traceback, then exit with status 1 right away.

    A normal exit first waits at the distributed runtime's shutdown barrier, for up to 5 minutes, for peers that
    are themselves blocked in a collective waiting for this process: the run would hang that long. Exiting at
    once stops the heartbeats, so the peers abort after `heartbeat_timeout_s` (and a launcher sees the failure
    now).
    """
    sys.__excepthook__(exc_type, exc, traceback)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def is_main_process() -> bool:
    """True on process 0, the one that logs, writes summaries and saves non-array files."""
    return jax.process_index() == 0
