"""RunCheckpoints: the whole state and the data position round-trip, the keep policy (newest and best), the
fall-back past an unreadable checkpoint, atomic saves, restoring onto another mesh, and when saves are due.
Nothing here compiles the GRPO step: checkpoints hold arbitrary states built from the tiny model's shapes."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tiny_run import TINY_OVERRIDES, tiny_config
from rlreason.rl.step import TrainState
from rlreason.train.checkpoint import RunCheckpoints, leaf_name
from rlreason.train.loop import build_trainer, checkpoint_due
from train_runs import REPO, child_env, saved_steps

# A failed orbax restore leaves its unfinished array reads behind, which pytest would print one by one.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

MESH_DEVICES = 8


def run_config(model_dir, checkpoint_dir, *overrides):
    # grpo.beta > 0: the state holds reference params too.
    return tiny_config(f"train.model_dir={model_dir}", f"checkpoint.dir={checkpoint_dir}", "grpo.beta=0.04",
                       *overrides)


def random_state(like: TrainState, seed: int) -> TrainState:
    """A state shaped, typed and placed like `like`, every number drawn at random: a round trip that loses or
    mixes up any leaf shows."""
    numbers = np.random.default_rng(seed)

    def draw(leaf):
        values = (numbers.integers(0, 1000, leaf.shape) if np.issubdtype(leaf.dtype, np.integer)
                  else numbers.standard_normal(leaf.shape))
        return jax.device_put(values.astype(leaf.dtype), leaf.sharding)

    return jax.tree.map(draw, like.replace(rng=None)).replace(rng=jax.random.key(seed))


def assert_same_state(restored: TrainState, saved: TrainState) -> None:
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(saved.rng))
    for (path, leaf), other in zip(jax.tree.leaves_with_path(restored.replace(rng=None)),
                                   jax.tree.leaves(saved.replace(rng=None)), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(other), err_msg=leaf_name(path))


@pytest.fixture(scope="module")
def trainer(tiny_base_model, tmp_path_factory):
    """A trainer (nothing compiled) whose state and prompt stream the tests save."""
    return build_trainer(run_config(tiny_base_model, tmp_path_factory.mktemp("unused")))


def test_state_and_data_position_round_trip(trainer, tiny_base_model, tmp_path):
    cfg = run_config(tiny_base_model, tmp_path)
    state = random_state(trainer.state, seed=1)
    for _ in range(3):
        next(trainer.batches)
    with RunCheckpoints(cfg) as checkpoints:
        checkpoints.save(3, state, trainer.batches, {"reward": 0.5})
    expected_batch = next(trainer.batches)

    resumed = build_trainer(cfg, abstract_state=True)  # a fresh run: its stream starts at the first batch
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(resumed.state))
    with RunCheckpoints(cfg) as checkpoints:
        restored, step = checkpoints.restore(resumed.state, resumed.batches)
    assert step == 3
    assert restored.ref_params is not None and jax.random.key_impl(restored.rng) == jax.random.key_impl(state.rng)
    assert_same_state(restored, state)
    for key, value in next(resumed.batches).items():
        np.testing.assert_array_equal(value, expected_batch[key])


@pytest.mark.parametrize("keep, values, kept", [
    # reward, higher is better: the newest two (4, 5) and the best (2); NaN ranks worst.
    (["checkpoint.keep_last=2", "checkpoint.keep_best=1"], [0.2, 0.9, float("nan"), 0.1, 0.3], [2, 4, 5]),
    # loss, lower is better: the newest (5) and the best (3); NaN ranks worst here too.
    (["checkpoint.keep_last=1", "checkpoint.keep_best=1", "checkpoint.best_metric=loss", "checkpoint.best_mode=min"],
     [0.5, float("nan"), 0.1, 0.7, 0.6], [3, 5]),
    # no best: the newest two only.
    (["checkpoint.keep_last=2"], [0.9, 0.8, 0.7, 0.6, 0.5], [4, 5]),
    # an eval metric, carried by the evaluated steps only (None: not evaluated, e.g. a time-based save): the
    # newest (5) and the best two evaluated ones (2, 4); the others rank worst.
    (["checkpoint.keep_last=1", "checkpoint.keep_best=2", "checkpoint.best_metric=eval/heldout/pass@1_lenient",
      "train.eval_every=2", "checkpoint.every_steps=2"], [None, 0.5, None, 0.25, None], [2, 4, 5]),
])
def test_keeps_the_newest_and_the_best(trainer, tiny_base_model, tmp_path, keep, values, kept):
    cfg = run_config(tiny_base_model, tmp_path, *keep)
    metric = cfg.checkpoint.best_metric
    with RunCheckpoints(cfg) as checkpoints:
        for step, value in enumerate(values, start=1):
            checkpoints.save(step, trainer.state, trainer.batches, {"reward": 0.0} if value is None else {metric: value})
    assert saved_steps(tmp_path) == kept


def test_an_unreadable_newest_checkpoint_is_passed_over_with_a_warning_and_kept(trainer, tiny_base_model, tmp_path,
                                                                                  caplog):
    cfg = run_config(tiny_base_model, tmp_path)
    states = {step: random_state(trainer.state, seed=step) for step in (1, 2)}
    with RunCheckpoints(cfg) as checkpoints:
        for step, state in states.items():
            checkpoints.save(step, state, trainer.batches, {"reward": 0.0})
    manifest = tmp_path / "2" / "state" / "manifest.ocdbt"
    truncated = manifest.read_bytes()[:-20]
    manifest.write_bytes(truncated)

    with caplog.at_level(logging.WARNING, logger="rlreason.train"), RunCheckpoints(cfg) as checkpoints:
        restored, step = checkpoints.restore(build_trainer(cfg, abstract_state=True).state, trainer.batches)
        assert checkpoints.steps == [1], "step 2 may be saved again"
    assert step == 1
    assert_same_state(restored, states[1])
    assert f"checkpoint {tmp_path / '2'} cannot be restored" in caplog.text
    assert f"resuming from the previous one, {tmp_path / '1'}, instead" in caplog.text
    kept = [path for path in tmp_path.iterdir() if path.name.startswith("2.unreadable-")]
    assert len(kept) == 1 and (kept[0] / "state" / "manifest.ocdbt").read_bytes() == truncated


def test_a_crash_mid_save_leaves_the_previous_checkpoint_usable(trainer, tiny_base_model, tmp_path):
    overrides = [f"train.model_dir={tiny_base_model}", f"checkpoint.dir={tmp_path}", "grpo.beta=0.04"]
    subprocess.run([sys.executable, "tests/train/scripts/crash_mid_save.py", "configs/demo_cpu.yaml",
                    *TINY_OVERRIDES, *overrides], cwd=REPO, env=child_env(), check=True, timeout=300,
                   capture_output=True)
    leftovers = [path.name for path in tmp_path.iterdir() if not path.name.isdigit()]
    assert saved_steps(tmp_path) == [1] and leftovers == ["2.orbax-checkpoint-tmp"], "the crash came mid-save"

    cfg = run_config(tiny_base_model, tmp_path)
    with RunCheckpoints(cfg) as checkpoints:
        assert checkpoints.steps == [1]
        restored, step = checkpoints.restore(build_trainer(cfg, abstract_state=True).state, trainer.batches)
    assert step == 1 and int(restored.step) == 0
    assert [path.name for path in tmp_path.iterdir()] == ["1"], "the unfinished save is cleaned up"


def test_restores_a_one_device_checkpoint_onto_an_eight_device_mesh(trainer, tiny_base_model, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    cfg = run_config(tiny_base_model, checkpoint_dir)
    assert len(trainer.mesh.devices.flat) == 1
    state = random_state(trainer.state, seed=7)
    with RunCheckpoints(cfg) as checkpoints:
        checkpoints.save(5, state, trainer.batches, {"reward": 0.0})
    expected_batch = next(trainer.batches)

    out = tmp_path / "restored.npz"
    mesh = ["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"]
    subprocess.run([sys.executable, "tests/train/scripts/restore_on_mesh.py", str(out), "configs/demo_cpu.yaml",
                    *TINY_OVERRIDES, f"train.model_dir={tiny_base_model}", f"checkpoint.dir={checkpoint_dir}",
                    "grpo.beta=0.04", *mesh], cwd=REPO, check=True, timeout=300, capture_output=True,
                   env=dict(child_env(), XLA_FLAGS=f"--xla_force_host_platform_device_count={MESH_DEVICES}"))
    restored = np.load(out)
    assert int(restored["devices"]) == MESH_DEVICES and int(restored["step"]) == 5
    np.testing.assert_array_equal(restored["rng"], jax.random.key_data(state.rng))
    for path, leaf in jax.tree.leaves_with_path(state.replace(rng=None)):
        np.testing.assert_array_equal(restored[f"leaf/{leaf_name(path)}"], np.asarray(leaf), err_msg=leaf_name(path))
    # Laid out on the new mesh: the embedding split by vocab over tensor and by embed over fsdp, Adam's moments too.
    for name in ("params.embed", "ref_params.embed", "opt_state.1.0.mu.embed"):
        assert str(restored[f"spec/{name}"]) == "P('tensor', 'fsdp')", name
    for key, value in expected_batch.items():
        np.testing.assert_array_equal(restored[f"batch/{key}"], value)


def test_when_saves_are_due(tiny_base_model, tmp_path):
    cfg = run_config(tiny_base_model, tmp_path, "train.steps=10", "checkpoint.every_steps=4")
    assert [step for step in range(1, 11) if checkpoint_due(cfg, step, time_due=False)] == [4, 8, 10]
    assert checkpoint_due(cfg, 5, time_due=True)

    timed = run_config(tiny_base_model, tmp_path, "checkpoint.every_seconds=0.2")
    with RunCheckpoints(timed) as checkpoints:
        assert not checkpoints.time_due()
        time.sleep(0.25)
        assert checkpoints.time_due()
    with RunCheckpoints(run_config(tiny_base_model, tmp_path, "checkpoint.every_seconds=0")) as checkpoints:
        time.sleep(0.01)
        assert not checkpoints.time_due(), "0 turns time-based saves off"



@pytest.mark.parametrize("message, dropped", [
    ("Task exception was never retrieved\nfuture: <Task finished coro=<_read_array() at /site/orbax/io.py:1>>", True),
    ("Future exception was never retrieved\nfuture: <Future finished exception=ValueError('DATA_LOSS: Error "
     "reading \"a/.zarray\" in OCDBT database')>", True),
    ("Future exception was never retrieved\nfuture: <Future finished exception=KeyError('user code')>", False),
    ("Executing <Task pending> took 0.2 seconds", False),
])
def test_only_the_abandoned_reads_of_a_failed_restore_are_silenced(message, dropped):
    """asyncio reports an orbax read left behind by a failed restore as a task or as a future; both are dropped
    once a restore has been tried, and nothing else asyncio logs is."""
    from rlreason.train.checkpoint import _quiet_the_aftermath_of_failed_restores
    _quiet_the_aftermath_of_failed_restores()
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)
    assert logging.getLogger("asyncio").filter(record) is (not dropped)
