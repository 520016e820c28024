"""`rlreason sft`: supervised fine-tuning of train.model_dir on prompt / response rows (sft.*), compiled once.

The R1 pipeline's cold start and its rejection-sampling stage, and distillation by SFT on a teacher's traces
(`rlreason generate` writes all three kinds of data). Rows come from `rlreason.data.sft` (templated, packed);
the loss is the mean negative log-likelihood of the response and EOS tokens of the batch (token-weighted, so a
packed batch and the same examples unpacked give the same loss). An update whose loss or gradient norm is not
finite is skipped, as in GRPO.

It runs on the same mesh, with the same checkpoints (and resume), metrics.jsonl, evaluations every
train.eval_every steps, Ctrl-C handling and model/ output as `rlreason train` (rlreason.train.update_loop;
the out_dir layout is rlreason.train.loop's, samples.jsonl staying empty).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlreason.config import Config, ModelConfig
from rlreason.data.pipeline import row_batches
from rlreason.data.sft import SFT_ROW_KEYS, load_sft_rows
from rlreason.models.logprobs import hidden_token_stats
from rlreason.models.transformer import Layout, forward_hidden, laid_out
from rlreason.parallel.distributed import initialize, is_main_process
from rlreason.parallel.host_data import process_rows
from rlreason.parallel.rules import model_layout
from rlreason.rl.step import TrainState
from rlreason.train.loop import run_frame
from rlreason.train.optim import make_optimizer
from rlreason.train.update_loop import (UpdateRun, apply_update, checked_policy, run_updates, start_state,
                                        state_layout)


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
                  state_sharding=None, arrays: Layout = Layout()):
    """The compiled update: (state, batch) -> (state, metrics). Metrics: loss (mean NLL per response token),
    grad_norm, response_tokens, learning_rate, nonfinite_updates (1 when the update was skipped). `arrays`: how
    the forward pass lays out its activations (rlreason.parallel.rules.model_layout of the run's mesh)."""

    def mean_nll(params, batch):
        total, count = response_nll(params, batch, model_cfg)
        return total / jnp.maximum(count, 1), count

    def step(state: TrainState, batch: dict):
        (loss, count), grads = jax.value_and_grad(mean_nll, has_aux=True)(state.params, batch)
        new_state, grad_norm, skipped = apply_update(state, grads, loss, optimizer)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "response_tokens": count,
                           "learning_rate": learning_rate_fn(state.step), "nonfinite_updates": skipped}

    return jax.jit(laid_out(step, arrays), donate_argnums=0, out_shardings=(state_sharding, None))


def sft(cfg: Config, show_progress: bool = True):
    """Fine-tunes to `train.steps`, resuming from the run's newest checkpoint when there is one; writes the
    model to <train.out_dir>/model. Returns (final TrainState, every step's metrics). Raises RunStopped as
    `rlreason train` does."""
    initialize(cfg.distributed)
    with run_frame(cfg) as (stop_signals, checkpoints):
        mesh, rules, model_cfg, tokenizer = checked_policy(cfg)
        rows = load_sft_rows(cfg, tokenizer)
        batch_size = cfg.train.batch_size
        batches = row_batches(rows, SFT_ROW_KEYS, batch_size, cfg.train.seed, process_rows(mesh, batch_size, rules))
        optimizer, schedule = make_optimizer(cfg.sft.optim, cfg.train.steps)
        layout = state_layout(model_cfg, optimizer, mesh, rules)
        state, start = start_state(cfg, model_cfg, optimizer, layout, checkpoints, batches)
        if is_main_process():
            print(f"sft: {rows.num_examples} examples in {len(rows)} rows of {cfg.sft.seq_len} tokens "
                  f"({rows.loss_mask.sum() / rows.tokens.size:.0%} of the tokens are trained on)")
        step = make_sft_step(model_cfg, optimizer, schedule, layout, model_layout(mesh, rules))
        run = UpdateRun(cfg, model_cfg, tokenizer, mesh, rules, batches, step, "response_tokens", "sft",
                        rows.skipped_rows)
        return run_updates(run, state, start, checkpoints, stop_signals, show_progress)
