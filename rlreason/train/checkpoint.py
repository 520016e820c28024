"""Checkpoints of a GRPO run with orbax: asynchronous saves, the newest and the best kept, restored onto any mesh,
and a checkpoint that cannot be read passed over for the one before it.

`checkpoint.dir` (default <train.out_dir>/checkpoints) holds, per saved step:
    <step>/state/    the TrainState: step, params, opt_state, ref_params (grpo.beta > 0), rng as raw key data; a LoRA
                     run's params are its adapters, and its frozen base is not saved (it is train.model_dir's), nor is
                     the PRM of grpo.process_reward
    <step>/data/     each process's position in its data stream (grain: one JSON file per process)
    <step>/config/   the run's resolved config as JSON
and `<step>.unreadable-<time>/` for a checkpoint that failed to restore when an older one did restore: it is
moved aside, not deleted, so that the run can save that step again. Orbax deletes checkpoints only to apply
the keep policy after a successful save, so a failed resume leaves every checkpoint as it was.

Saving is asynchronous: `save` returns once the arrays are copied off the devices, and orbax writes them in a
background thread into a temporary directory that it renames to <step> when complete (atomic on a local or
POSIX file system; on GCS orbax writes a commit marker last). A crash mid-save leaves that temporary directory,
which is ignored and removed by the next run, and the previous checkpoints intact.

Keeping: orbax's preservation policy keeps the newest `checkpoint.keep_last` checkpoints and the
`checkpoint.keep_best` ones with the best `checkpoint.best_metric` (mode `best_mode`); a NaN value ranks worst.

Restoring onto another mesh: the state is read into abstract arrays (shape, dtype, sharding) derived from the
resuming run's own mesh and rules, so each device reads only its shards, whatever mesh wrote them.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from rlreason.config import CheckpointConfig, Config, to_dict
from rlreason.data.pipeline import RowBatches, checkpoint_restore_args, checkpoint_save_args
from rlreason.parallel.distributed import is_main_process
from rlreason.rl.step import TrainState
from rlreason.storage import storage_path
from rlreason.train.preemption import any_process

logger = logging.getLogger("rlreason.train")

# Characters of a restore error quoted in messages (orbax errors can quote whole TensorStore specs).
QUOTED_ERROR_CHARS = 300
LISTED_LEAVES = 5


class CheckpointError(ValueError):
    """No checkpoint to resume from: none where one is required, or none that can be restored."""


class Restored(NamedTuple):
    state: TrainState
    step: int


def checkpoint_dir(cfg: Config) -> epath.Path:
    """checkpoint.dir, or <train.out_dir>/checkpoints: local, on a mount, or a gs:// URL kept as one."""
    return storage_path(cfg.checkpoint.dir) if cfg.checkpoint.dir else storage_path(cfg.train.out_dir) / "checkpoints"


def storable(state: TrainState) -> TrainState:
    """The state as orbax writes it: the typed RNG key as its raw uint32 key data, without a LoRA run's base."""
    return state.replace(rng=jax.random.key_data(state.rng), base=None, process_reward_model=None)


def abstract_storable(state: TrainState) -> TrainState:
    """Abstract arrays (jax.ShapeDtypeStruct with sharding) of `storable(state)`; `state` may be abstract."""
    key_data = jax.eval_shape(jax.random.key_data, state.rng)
    abstract = state.replace(rng=jax.ShapeDtypeStruct(key_data.shape, key_data.dtype, sharding=state.rng.sharding),
                             base=None, process_reward_model=None)
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), abstract)


def from_storable(state: TrainState) -> TrainState:
    return state.replace(rng=jax.random.wrap_key_data(state.rng))


def leaf_name(path) -> str:
    """A tree path as orbax names the leaf: "params.embed", "opt_state.1.0.mu.embed"."""
    return ".".join(str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key)))) for key in path)


def layout_mismatch(saved: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
    """What differs between the leaf shapes of a checkpoint and those the resuming run expects, or None."""
    problems = []
    for label, names in (("missing from the checkpoint", expected.keys() - saved.keys()),
                         ("in the checkpoint but not in this run", saved.keys() - expected.keys())):
        if names:
            problems.append(f"{label}: {', '.join(sorted(names)[:LISTED_LEAVES])}"
                            + (f" and {len(names) - LISTED_LEAVES} more" if len(names) > LISTED_LEAVES else ""))
    shapes = [f"{name} {saved[name]} here {expected[name]}" for name in sorted(expected.keys() & saved.keys())
              if saved[name] != expected[name]]
    if shapes:
        problems.append("shapes differ (checkpoint vs this run): " + "; ".join(shapes[:LISTED_LEAVES]))
    return "; ".join(problems) or None


def config_changes(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """"key: old -> new" for every dotted key whose value differs between two `to_dict` configs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [change for key in sorted(saved.keys() | current.keys())
                for change in config_changes(saved.get(key), current.get(key), f"{prefix}{key}.")]
    return [] if saved == current else [f"{prefix[:-1]}: {saved!r} -> {current!r}"]


def ranking_value(name: str, mode: str):
    """metrics -> the value orbax ranks a checkpoint by: metric `name`, with NaN (or no value) ranking worst."""
    worst = -math.inf if mode == "max" else math.inf

    def value(metrics: dict) -> float:
        number = metrics.get(name, math.nan)
        return worst if math.isnan(number) else number

    return value


def preservation_policy(cfg: CheckpointConfig):
    """Keep the newest keep_last checkpoints, plus the keep_best best by best_metric."""
    newest = checkpoint_managers.LatestN(n=cfg.keep_last)
    if not cfg.keep_best:
        return newest
    best = checkpoint_managers.BestN(get_metric_fn=ranking_value(cfg.best_metric, cfg.best_mode),
                                     reverse=cfg.best_mode == "min", n=cfg.keep_best,
                                     keep_checkpoints_without_metrics=False)
    return checkpoint_managers.AnyPreservationPolicy([newest, best])


def _first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= QUOTED_ERROR_CHARS else text[:QUOTED_ERROR_CHARS] + "..."


def _aftermath_of_a_failed_restore(unraisable) -> bool:
    """Whether an exception Python could not raise anywhere comes from the array reads that a failed orbax
    restore abandons: their coroutines, closed unfinished, and TensorStore's completions of them, which find
    orbax's event loop already closed."""
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


class _AbandonedOrbaxTasks(logging.Filter):
    """Drops asyncio's "Task (or Future) exception was never retrieved" for orbax's reads left behind by a failed
    restore: an orbax coroutine, or a tensorstore read that asyncio wrapped as a task or a future (its repr names
    only the storage error)."""

    UNRETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")
    ABANDONED_READS = ("orbax", "tensorstore", "OCDBT", '"zarr" driver')

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(self.UNRETRIEVED) and any(mark in message for mark in self.ABANDONED_READS))


def _quiet_the_aftermath_of_failed_restores() -> None:
    """A failed restore leaves orbax's other array reads behind, and each would print a traceback (as an
    unraisable exception, or through asyncio's logger) before, during and after the run's error message, which
    already says what went wrong. Drops those, and only those, from then on."""
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(existing, _AbandonedOrbaxTasks) for existing in asyncio_logger.filters):
        asyncio_logger.addFilter(_AbandonedOrbaxTasks())
    previous = sys.unraisablehook
    if getattr(previous, "drops_failed_restores", False):
        return

    def hook(unraisable) -> None:
        if not _aftermath_of_a_failed_restore(unraisable):
            previous(unraisable)

    hook.drops_failed_restores = True
    sys.unraisablehook = hook


class RunCheckpoints:
    """The checkpoints of one run (see the module docstring). Every process of the run makes one and calls
    `save` and `restore` at the same steps: both are collective."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.directory = checkpoint_dir(cfg)
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {str(self.directory)!r} is a file; point checkpoint.dir "
                                  f"(or train.out_dir) elsewhere")
        if cfg.checkpoint.resume == "required" and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint.resume=required, but checkpoint directory {str(self.directory)!r} "
                                  f"does not exist; set checkpoint.dir (or train.out_dir) to the run to resume, or "
                                  f"checkpoint.resume=auto to start a new run")
        options = ocp.CheckpointManagerOptions(preservation_policy=preservation_policy(cfg.checkpoint),
                                               cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        if cfg.checkpoint.resume == "required" and not self.steps:
            self.close()  # no `with` block will: its background threads would outlive the error
            raise CheckpointError(f"checkpoint.resume=required, but {str(self.directory)!r} holds no checkpoint; "
                                  f"set checkpoint.dir (or train.out_dir) to the run to resume, or "
                                  f"checkpoint.resume=auto to start a new run")
        self.last_step = self._manager.latest_step()  # the step of the newest checkpoint, saved or restored
        self._last_save_time = time.monotonic()

    @property
    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def path(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def time_due(self) -> bool:
        """Whether checkpoint.every_seconds have passed since the last save (or the start), on this host's clock."""
        every = self.cfg.checkpoint.every_seconds
        return every > 0 and time.monotonic() - self._last_save_time >= every

    def save(self, step: int, state: TrainState, batches: RowBatches, metrics: dict[str, float]) -> None:
        """Starts saving `state` and the data stream's position as checkpoint `step`; returns once the arrays
        are off the devices, so the next step may donate them. `metrics` rank the checkpoint for keep_best."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(storable(state)),
                                  data=checkpoint_save_args(batches),
                                  config=ocp.args.JsonSave(to_dict(self.cfg)))
        self._manager.save(step, args=args, metrics=metrics, force=True)
        self.last_step = step
        self._last_save_time = time.monotonic()

    def restore(self, abstract_state: TrainState, batches: RowBatches) -> Restored:
        """The newest checkpoint that every process can restore, into arrays laid out like `abstract_state`
        (jax.ShapeDtypeStruct leaves with shardings; a LoRA run's base and the process reward model are taken from
        it as they are), and `batches` moved to its position. Newer checkpoints that
        fail are moved aside with a warning; when none restores, raises CheckpointError and moves nothing."""
        # Before the first attempt: the aftermath of a failure begins before its error reaches this frame.
        _quiet_the_aftermath_of_failed_restores()
        target = abstract_storable(abstract_state)
        failures: list[tuple[int, str]] = []
        for step in reversed(self.steps):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=checkpoint_restore_args(batches),
                    config=ocp.args.JsonRestore()))
                problem = None
            except Exception as error:  # noqa: BLE001 - whatever fails to read makes this checkpoint unusable
                problem = self._diagnose(step, target) or _first_line(error)
            if any_process([problem is not None])[0]:
                failures.append((step, problem or "it failed to restore on another process"))
                continue
            self._set_aside(failures, step)
            changes = config_changes(restored.config, to_dict(self.cfg))
            if changes:
                logger.warning("resuming from %s with settings changed since it was saved: %s", self.path(step),
                               "; ".join(changes))
            self.last_step = step
            return Restored(from_storable(restored.state).replace(
                base=abstract_state.base, process_reward_model=abstract_state.process_reward_model), step)
        listing = "\n".join(f"  {self.path(step)}: {problem}" for step, problem in failures)
        raise CheckpointError(f"no checkpoint in {str(self.directory)!r} can be restored (nothing was moved or "
                              f"deleted):\n{listing}\nResume with the settings the checkpoints were saved with "
                              f"(each holds its config in config/), or start a new run in another train.out_dir")

    def _diagnose(self, step: int, target: TrainState) -> str | None:
        """Why `target` does not fit checkpoint `step`'s arrays (a changed model or grpo.beta), if that is why."""
        try:
            saved_leaves = jax.tree.leaves(ocp.StandardCheckpointHandler().metadata(self.path(step) / "state"))
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore error says more
            return None
        saved = {leaf.name: tuple(leaf.shape) for leaf in saved_leaves}
        expected = {leaf_name(path): tuple(leaf.shape) for path, leaf in jax.tree.leaves_with_path(target)}
        mismatch = layout_mismatch(saved, expected)
        return mismatch and (f"the saved state does not fit this run's model and settings ({mismatch}); were "
                             f"train.model_dir, model.* or grpo.beta changed?")

    def _set_aside(self, failures: list[tuple[int, str]], restored_step: int) -> None:
        """Moves the checkpoints newer than `restored_step` that failed to <step>.unreadable-<time>."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for step, problem in failures:
            kept_as = self.directory / f"{step}.unreadable-{stamp}"
            logger.warning("checkpoint %s cannot be restored (%s); resuming from the previous one, %s, instead. "
                           "The unreadable checkpoint is kept as %s", self.path(step), problem,
                           self.path(restored_step), kept_as)
            if is_main_process():
                self.path(step).rename(kept_as)
        if failures:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("rlreason: unreadable checkpoints moved aside")
            self._manager.reload()

    def close(self) -> None:
        """Waits for the save in flight, if any, to be complete on disk, and for orbax's removal of unfinished
        saves of earlier runs, which it starts in the background when the manager is made and which its own
        close() does not wait for: a run refused at once would exit under it, and it would print errors (a
        directory gone, or "cannot schedule new futures after interpreter shutdown")."""
        self._manager._maybe_await_cleanup_tmp_directory()  # noqa: SLF001 - no public way to wait for it
        self._manager.close()

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
