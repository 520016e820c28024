"""The run around a compiled update other than GRPO's (SFT, on-policy distillation), as `rlreason train` runs
GRPO's: the state made or restored on the mesh, then the loop over batches of the data stream, with
metrics.jsonl and the metric writers, evaluations every train.eval_every steps, checkpoints, stop signals and
non-finite updates handled as rlreason.train.loop handles them, and the model written to <train.out_dir>/model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlreason.config import Config, ModelConfig, save_config
from rlreason.data.pipeline import RowBatches
from rlreason.models.store import save_model
from rlreason.models.transformer import init_params
from rlreason.parallel.distributed import is_main_process
from rlreason.parallel.host_data import global_batch
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import Rules, axis_rules, opt_state_shardings, param_shardings, replicated
from rlreason.progress import progress_bar
from rlreason.rl.step import TrainState, init_train_state
from rlreason.storage import storage_path
from rlreason.tokenizers import Tokenizer
from rlreason.train.checkpoint import RunCheckpoints
from rlreason.train.evaluate import build_evaluator
from rlreason.train.loop import RunLog, abstract_on, end_step, evaluation_if_due, initial_params, load_policy_config
from rlreason.train.preemption import StopSignals
from rlreason.train.preflight import check_batch_geometry, check_tokenizer


def checked_policy(cfg: Config) -> tuple[Mesh, Rules, ModelConfig, Tokenizer]:
    """(mesh, rules, the policy's ModelConfig and Tokenizer) of train.model_dir, checked before any weights are
    read: train.batch_size against the mesh, the tokenizer against tokenizer.template."""
    mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
    check_batch_geometry(cfg, mesh, rules)
    model_cfg, tokenizer, source = load_policy_config(cfg)
    check_tokenizer(cfg, tokenizer, source)
    return mesh, rules, model_cfg, tokenizer


def state_layout(model_cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                 rules: Rules) -> TrainState:
    """Where each array of the state lives (no reference model)."""
    return TrainState(step=replicated(mesh), params=param_shardings(model_cfg, mesh, rules),
                      opt_state=opt_state_shardings(optimizer, model_cfg, mesh, rules), ref_params=None,
                      rng=replicated(mesh))


def start_state(cfg: Config, model_cfg: ModelConfig, optimizer: optax.GradientTransformation, layout: TrainState,
                checkpoints: RunCheckpoints, batches: RowBatches) -> tuple[TrainState, int]:
    """(state, its step): restored from the newest checkpoint (and `batches` moved to its position) when the run
    has one, else train.model_dir's params (or a random init) with a fresh optimizer state."""
    rng = jax.random.key(cfg.train.seed)
    if checkpoints.last_step is not None:
        shapes = jax.eval_shape(lambda: init_train_state(init_params(model_cfg, rng), optimizer, rng, False))
        return checkpoints.restore(abstract_on(shapes, layout), batches)
    params = initial_params(cfg, model_cfg, layout.params)
    return init_train_state(params, optimizer, rng, keep_reference=False, shardings=layout), 0


def apply_update(state: TrainState, grads, loss: jax.Array, optimizer: optax.GradientTransformation):
    """(state after one optimizer step, gradient norm, 1 if skipped else 0): an update whose loss or gradient norm
    is not finite leaves the params and optimizer state as they were (one NaN would poison both for good)."""
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    return (state.replace(step=state.step + 1, params=keep_if_finite(params, state.params),
                          opt_state=keep_if_finite(opt_state, state.opt_state)),
            grad_norm, (~finite).astype(jnp.int32))


@dataclasses.dataclass
class UpdateRun:
    """What `run_updates` needs besides the state."""

    cfg: Config
    model_cfg: ModelConfig
    tokenizer: Tokenizer
    mesh: Mesh
    rules: Rules
    batches: RowBatches  # this process's rows of each global batch of train.batch_size rows
    step_fn: Callable  # compiled (state, global batch) -> (state, metrics); metrics hold loss, nonfinite_updates
    tokens_metric: str  # the metric that tokens_per_s counts
    desc: str  # the progress bar's label
    skipped_rows: int  # malformed data rows left out (task.on_bad_row: skip)


def run_updates(run: UpdateRun, state: TrainState, start: int, checkpoints: RunCheckpoints,
                stop_signals: StopSignals, show_progress: bool) -> tuple[TrainState, list[dict]]:
    """Steps start+1 .. train.steps, then the model to <train.out_dir>/model; returns (final state, every step's
    metrics, resumed ones included). Raises RunStopped as rlreason.train.loop.train does."""
    cfg, main_process = run.cfg, is_main_process()
    out_dir = storage_path(cfg.train.out_dir)
    resuming = checkpoints.last_step is not None
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        if resuming:
            print(f"resuming from checkpoint {checkpoints.path(start)} (step {start} of {cfg.train.steps})")
    evaluator = (build_evaluator(cfg, run.model_cfg, run.tokenizer, run.mesh, run.rules)
                 if cfg.train.eval_every else None)
    log = RunLog(cfg, out_dir, main_process, start if resuming else None)
    history, nonfinite_streak = log.history, 0
    bar = progress_bar(range(start, cfg.train.steps), desc=run.desc, initial=start, total=cfg.train.steps,
                       show=show_progress and main_process)
    with contextlib.closing(log), contextlib.closing(bar):
        for index in bar:
            step = index + 1
            batch = global_batch(next(run.batches), run.mesh, cfg.train.batch_size, run.rules)
            start_time = time.perf_counter()
            state, metrics = run.step_fn(state, batch)
            metrics = {key: float(value) for key, value in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - start_time
            metrics.update(step=step, step_time_s=elapsed, tokens_per_s=metrics[run.tokens_metric] / elapsed)
            metrics["data/skipped_rows"] = run.skipped_rows
            metrics.update(evaluation_if_due(cfg, step, evaluator, state.params, out_dir))
            history.append(metrics)
            log.write_metrics(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", step_s=f"{elapsed:.2f}")
            nonfinite_streak = end_step(cfg, step, metrics, state, run.batches, checkpoints, stop_signals,
                                        nonfinite_streak)
    save_model(out_dir / "model", state.params, run.model_cfg, run.tokenizer)
    return state, history
