"""`rlreason sft`: supervised fine-tuning of train.model_dir on prompt / response rows (sft.*), compiled once.

The R1 pipeline's cold start and its rejection-sampling stage, and distillation by SFT on a teacher's traces
(`rlreason generate` writes all three kinds of data). Rows come from `rlreason.data.sft` (templated, packed);
the loss is the mean negative log-likelihood of the response and EOS tokens of the batch (token-weighted, so a
packed batch and the same examples unpacked give the same loss). An update whose loss or gradient norm is not
finite is skipped, as in GRPO.

It runs on the same mesh, with the same checkpoints (and resume), metrics.jsonl, evaluations every
train.eval_every steps, Ctrl-C handling and model/ output as `rlreason train` (see rlreason.train.loop, whose
out_dir layout it shares; samples.jsonl stays empty).
"""

from __future__ import annotations

import contextlib
import time

import jax
import jax.numpy as jnp
import optax

from rlreason.config import Config, ModelConfig, save_config
from rlreason.data.pipeline import row_batches
from rlreason.data.sft import SFT_ROW_KEYS, load_sft_rows
from rlreason.models.logprobs import hidden_token_stats
from rlreason.models.store import save_model
from rlreason.models.transformer import forward_hidden, init_params
from rlreason.parallel.distributed import initialize, is_main_process
from rlreason.parallel.host_data import global_batch, process_rows
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules, opt_state_shardings, param_shardings, replicated
from rlreason.progress import progress_bar
from rlreason.rl.step import TrainState, init_train_state
from rlreason.storage import storage_path
from rlreason.train.evaluate import build_evaluator
from rlreason.train.loop import (RunLog, abstract_on, end_step, evaluation_if_due, initial_params,
                                 load_policy_config, run_frame)
from rlreason.train.optim import make_optimizer
from rlreason.train.preflight import check_batch_geometry, check_tokenizer


def response_nll(params, batch: dict, model_cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """(summed negative log-likelihood, count) of the batch's target tokens: those with loss_mask set whose
    predecessor is in the same example. batch: SFT token rows (rlreason.data.sft), each [B, T]."""
    tokens, segments = batch["tokens"], batch["segment_ids"]
    hidden, _ = forward_hidden(params, tokens[:, :-1], batch["positions"][:, :-1], segments[:, :-1] > 0, model_cfg,
                               segment_ids=segments[:, :-1])
    logprobs, _ = hidden_token_stats(params, hidden, tokens[:, 1:], model_cfg, temperature=1.0)
    targets = (batch["loss_mask"][:, 1:] > 0) & (segments[:, 1:] == segments[:, :-1])
    return -jnp.sum(jnp.where(targets, logprobs, 0.0)), jnp.sum(targets)


def make_sft_step(model_cfg: ModelConfig, optimizer: optax.GradientTransformation, learning_rate_fn,
                  state_sharding=None):
    """The compiled update: (state, batch) -> (state, metrics). Metrics: loss (mean NLL per response token),
    grad_norm, response_tokens, learning_rate, nonfinite_updates (1 when the update was skipped)."""

    def mean_nll(params, batch):
        total, count = response_nll(params, batch, model_cfg)
        return total / jnp.maximum(count, 1), count

    def step(state: TrainState, batch: dict):
        (loss, count), grads = jax.value_and_grad(mean_nll, has_aux=True)(state.params, batch)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = state.replace(step=state.step + 1, params=keep_if_finite(params, state.params),
                                  opt_state=keep_if_finite(opt_state, state.opt_state))
        metrics = {"loss": loss, "grad_norm": grad_norm, "response_tokens": count,
                   "learning_rate": learning_rate_fn(state.step), "nonfinite_updates": (~finite).astype(jnp.int32)}
        return new_state, metrics

    return jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, None))


def sft(cfg: Config, show_progress: bool = True):
    """Fine-tunes to `train.steps`, resuming from the run's newest checkpoint when there is one; writes the
    model to <train.out_dir>/model. Returns (final TrainState, every step's metrics). Raises RunStopped as
    `rlreason train` does."""
    initialize(cfg.distributed)
    out_dir = storage_path(cfg.train.out_dir)
    main_process = is_main_process()
    with run_frame(cfg) as (stop_signals, checkpoints):
        resuming = checkpoints.last_step is not None
        mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
        check_batch_geometry(cfg, mesh, rules)
        model_cfg, tokenizer, source = load_policy_config(cfg)
        check_tokenizer(cfg, tokenizer, source)
        rows = load_sft_rows(cfg, tokenizer)
        batch_size = cfg.train.batch_size
        batches = row_batches(rows, SFT_ROW_KEYS, batch_size, cfg.train.seed, process_rows(mesh, batch_size, rules))
        optimizer, schedule = make_optimizer(cfg.sft.optim, cfg.train.steps)
        parameter_layout = param_shardings(model_cfg, mesh, rules)
        state_layout = TrainState(step=replicated(mesh), params=parameter_layout,
                                  opt_state=opt_state_shardings(optimizer, model_cfg, mesh, rules), ref_params=None,
                                  rng=replicated(mesh))
        rng = jax.random.key(cfg.train.seed)
        if resuming:
            shapes = jax.eval_shape(lambda: init_train_state(init_params(model_cfg, rng), optimizer, rng, False))
            state, start = checkpoints.restore(abstract_on(shapes, state_layout), batches)
        else:
            state, start = init_train_state(initial_params(cfg, model_cfg, parameter_layout), optimizer, rng,
                                            keep_reference=False, shardings=state_layout), 0
        step_fn = make_sft_step(model_cfg, optimizer, schedule, state_layout)
        evaluator = build_evaluator(cfg, model_cfg, tokenizer, mesh, rules) if cfg.train.eval_every else None
        if main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out_dir / "config.yaml")
            print(f"sft: {rows.num_examples} examples in {len(rows)} rows of {cfg.sft.seq_len} tokens "
                  f"({rows.loss_mask.sum() / rows.tokens.size:.0%} of the tokens are trained on)")
            if resuming:
                print(f"resuming from checkpoint {checkpoints.path(start)} (step {start} of {cfg.train.steps})")
        log = RunLog(cfg, out_dir, main_process, start if resuming else None)
        history, nonfinite_streak = log.history, 0
        bar = progress_bar(range(start, cfg.train.steps), desc="sft", initial=start, total=cfg.train.steps,
                           show=show_progress and main_process)
        with contextlib.closing(log), contextlib.closing(bar):
            for index in bar:
                step = index + 1
                batch = global_batch(next(batches), mesh, batch_size, rules)
                start_time = time.perf_counter()
                state, metrics = step_fn(state, batch)
                metrics = {key: float(value) for key, value in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - start_time
                metrics.update(step=step, step_time_s=elapsed, tokens_per_s=metrics["response_tokens"] / elapsed)
                metrics["data/skipped_rows"] = rows.skipped_rows
                metrics.update(evaluation_if_due(cfg, step, evaluator, state.params, out_dir))
                history.append(metrics)
                log.write_metrics(metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", step_s=f"{elapsed:.2f}")
                nonfinite_streak = end_step(cfg, step, metrics, state, batches, checkpoints, stop_signals,
                                            nonfinite_streak)
        save_model(out_dir / "model", state.params, model_cfg, tokenizer)
    return state, history
