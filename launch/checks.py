"""What every launcher checks before it creates, copies or runs anything, with the code `rlreason train` uses:

- the config file exists (and, where the launch ships this checkout, is one of its committed files) and loads
  and validates with `rlreason.config.load_config`, the launcher's own overrides included: an unknown key is
  refused here;
- the mesh fits the devices (`rlreason.parallel.mesh.mesh_shape`: a v4-32 has 16 chips, not 32) and the batch
  splits over them (`rlreason.train.preflight.check_batch_geometry`);
- the training state fits each device's memory: params, Adam's two moments and the reference model
  (grpo.beta > 0), each sharded by the rule table as training shards it (an estimate: activations, gradients
  and the KV cache come on top);
- the model directory (or tokenizer) the run starts from loads, and its tokenizer fits the template
  (`rlreason.train.loop.load_policy_config`, `check_tokenizer`), and the data files exist
  (`rlreason.data.readers.data_files`), where they are readable from here; only train.model_dir may be a URL.

A failed check raises ConfigError (or LaunchError for a launcher flag); `guarded` prints its message and exits
with code 2, without a traceback, before anything has been spent.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(REPO))  # check with the rlreason of this checkout: the code the launch ships or runs

from rlreason.config import Config, ConfigError  # noqa: E402
from rlreason.storage import is_url  # noqa: E402

GIB = 2**30
ERROR_EXIT_CODE = 2


class LaunchError(ValueError):
    """A launcher flag, or a run input the workers could not reach; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Devices:
    """What a launch runs on: `count` devices with `memory_bytes` each (0: not checked), e.g. 'v4-32 (16 chips)'."""

    count: int
    memory_bytes: int
    description: str


def guarded(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Runs a launcher's `main`; a refused check prints one line naming the launcher and exits with code 2."""
    from rlreason.models.store import ModelDirError
    from rlreason.tokenizers import TokenizerError

    try:
        return main(argv)
    except (ConfigError, LaunchError, ModelDirError, TokenizerError) as error:
        print(f"launch/{Path(sys.modules[main.__module__].__file__).name}: {error}", file=sys.stderr)
        return ERROR_EXIT_CODE


def shipped_config(config: str, committed: bool) -> str:
    """`config` as a path relative to this checkout's root, where the workers find it. Refuses a config file
    outside the checkout, and (`committed`: the workers get the committed HEAD) one not committed as it is."""
    path = Path(config).absolute()
    if not path.is_relative_to(REPO):
        raise LaunchError(f"config file {config!r} lies outside this repository ({REPO}), so the workers do not "
                          f"get it; copy it under configs/ (and commit it)")
    relative = str(path.relative_to(REPO))
    if committed and path.is_file():
        git = ["git", "-C", str(REPO)]
        if subprocess.run([*git, "ls-files", "--error-unmatch", relative], capture_output=True).returncode:
            raise LaunchError(f"config file {config!r} is not committed, so the workers (which get the committed "
                              f"HEAD) do not have it; git add and commit it")
        if subprocess.run([*git, "diff", "--quiet", "HEAD", "--", relative]).returncode:
            raise LaunchError(f"config file {config!r} has uncommitted changes, which the workers (they get the "
                              f"committed HEAD) would not see; commit them, or pass the changes as key=value")
    return relative


def check_mesh(cfg: Config, devices: Devices):
    """The run's mesh over `devices` (a jax AbstractMesh: sizes only); refuses sizes that do not fit them and a
    train.batch_size that does not split over the batch's mesh axes."""
    from jax.sharding import AbstractMesh

    from rlreason.parallel.mesh import MESH_AXES, mesh_shape
    from rlreason.parallel.rules import axis_rules
    from rlreason.train.preflight import check_batch_geometry

    try:
        shape = mesh_shape(cfg.mesh, devices.count)
    except ConfigError as error:
        raise ConfigError(f"{error} (on {devices.description}); set the mesh.* sizes to fit it, or launch on a "
                          f"slice of the mesh's size") from None
    mesh = AbstractMesh(shape, MESH_AXES)
    check_batch_geometry(cfg, mesh, axis_rules(cfg.mesh))
    return mesh


def state_bytes_per_device(cfg: Config, model_cfg, mesh) -> tuple[int, int]:
    """(parameter count, bytes of params + Adam's two moments + the reference params on the device holding the
    most), with each parameter split over `mesh` by the rule table (`rlreason.parallel.rules.partition_spec`)."""
    import jax
    import numpy as np

    from rlreason.models.transformer import ParamSpec, param_specs
    from rlreason.parallel.rules import axis_rules, partition_spec

    rules = axis_rules(cfg.mesh)
    count = shard_elements = 0
    for spec in jax.tree.leaves(param_specs(model_cfg), is_leaf=lambda node: isinstance(node, ParamSpec)):
        entries = partition_spec(spec.axes, spec.shape, mesh, rules)
        parts = [math.prod(mesh.shape[axis] for axis in ((entry,) if isinstance(entry, str) else entry or ()))
                 for entry in entries]
        count += math.prod(spec.shape)
        shard_elements += math.prod(size // part for size, part in zip(spec.shape, parts))
    copies = 1 + 2 + (1 if cfg.grpo.beta > 0 else 0)  # params, Adam's mu and nu (param dtype), the reference
    return count, shard_elements * copies * np.dtype(model_cfg.param_dtype).itemsize


def check_memory(cfg: Config, model_cfg, mesh, devices: Devices) -> str:
    """Refuses a training state larger than a device's memory; returns the estimate, for the launch's log."""
    count, needed = state_bytes_per_device(cfg, model_cfg, mesh)
    reference = " + the reference model" if cfg.grpo.beta > 0 else ""
    estimate = (f"{count:,} params ({model_cfg.param_dtype}): params + Adam's moments{reference} take "
                f"~{_size(needed)} per device on mesh {'x'.join(map(str, mesh.shape.values()))}")
    if devices.memory_bytes and needed > devices.memory_bytes:
        raise ConfigError(f"the model does not fit {devices.description}: {estimate}, more than the "
                          f"{devices.memory_bytes / GIB:.0f} GiB each has, before activations and the KV cache; "
                          f"split it over more devices (mesh.fsdp, mesh.tensor), set model.param_dtype=bfloat16, "
                          f"or launch on a larger slice")
    return estimate + (f" of {devices.memory_bytes / GIB:.0f} GiB" if devices.memory_bytes else "")


def _size(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB else f"{nbytes / 2**20:.1f} MiB"


def run_inputs(cfg: Config) -> list[tuple[str, str]]:
    """(config key, location) of every file or folder the run reads: the model directory it starts from (else
    the tokenizer of a random init) and the task's data files."""
    start = [("train.model_dir", cfg.train.model_dir)] if cfg.train.model_dir else [
        ("tokenizer.path", cfg.tokenizer.path)]
    return [(key, location) for key, location in
            [*start, ("task.path", cfg.task.path), ("task.eval_path", cfg.task.eval_path)] if location]


def check_run(cfg: Config, devices: Devices, readable: Callable[[str], bool] = lambda location: True,
              trains: bool = True) -> list[str]:
    """Every check of the module docstring. `readable(location)`: whether an input can be read from here (not a
    URL, not on a mount only the workers have); the others are left to the workers. The model directory (or the
    tokenizer of a random init) loads as training loads it, with `rlreason.train.loop.load_policy_config`; the
    memory estimate then uses its model, else the config's model.* section. `trains=False` (a program other
    than `rlreason train` runs) checks the mesh only. Returns what was checked, one line each, for the log."""
    from rlreason.data.readers import data_files
    from rlreason.train.loop import load_policy_config
    from rlreason.train.preflight import check_tokenizer

    mesh = check_mesh(cfg, devices)
    checked = [f"mesh {' x '.join(f'{axis}={size}' for axis, size in mesh.shape.items())} fits "
               f"{devices.description}; train.batch_size={cfg.train.batch_size} splits over it"]
    if not trains:
        return checked
    inputs = run_inputs(cfg)
    for key, location in inputs:
        if is_url(location) and key != "train.model_dir":
            raise ConfigError(f"config key '{key}' is the URL {location!r}, but {key} is read as a local file; "
                              f"give a local path (the cloud launchers copy it to every worker) or one under a "
                              f"shared mount")
    local = [(key, location) for key, location in inputs if not is_url(location) and readable(location)]
    model_cfg = cfg.model
    if not inputs or inputs[0] in local:
        model_cfg, tokenizer, source = load_policy_config(cfg)
        check_tokenizer(cfg, tokenizer, source)
        checked.append(f"the model config and tokenizer of {source} load and fit tokenizer.template")
    for key, location in local:
        if key.startswith("task."):
            data_files(location, key)
            checked.append(f"{key}={location} exists")
    checked += [f"{key}={location} is left to the workers to read" for key, location in inputs
                if (key, location) not in local]
    return [*checked, check_memory(cfg, model_cfg, mesh, devices)]


def report(checked: Sequence[str]) -> None:
    """The checks' lines on stderr, leaving stdout to the printed commands."""
    for line in checked:
        print(f"checked: {line}", file=sys.stderr)


def on_mount(location: str, mounts: Sequence[str]) -> bool:
    """Whether `location` lies under one of `mounts` (shared file systems mounted on every worker)."""
    return any(Path(location).is_relative_to(mount) for mount in mounts)


def check_outputs(cfg: Config, mounts: Sequence[str], mount_flag: str) -> None:
    """train.out_dir and checkpoint.dir must be storage that every worker shares and that outlives the workers:
    a gs:// URL (orbax writes checkpoints and the model there itself) or a path under one of `mounts`."""
    outputs = [("train.out_dir", cfg.train.out_dir)] + (
        [("checkpoint.dir", cfg.checkpoint.dir)] if cfg.checkpoint.dir else [])
    for key, location in outputs:
        if not (is_url(location) or on_mount(location, mounts)):
            raise ConfigError(
                f"config key '{key}' is {location!r}, a folder on each worker's own disk: every worker would write "
                f"its shards of the checkpoints and the model to its own disk, and they are lost with the workers "
                f"(--teardown deletes them). Set {key}=gs://BUCKET/RUN, or a path under a shared file system "
                f"mounted on every worker ({mount_flag})")


def worker_inputs(cfg: Config, mounts: Sequence[str]) -> list[tuple[str, str]]:
    """The run's inputs that are neither URLs nor on a shared mount, so each worker needs its own copy."""
    return [(key, location) for key, location in run_inputs(cfg)
            if not (is_url(location) or on_mount(location, mounts))]
