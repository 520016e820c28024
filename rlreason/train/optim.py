"""The optimizer: AdamW with gradient clipping and a warmup + decay schedule."""

from __future__ import annotations

import optax

from rlreason.config import OptimConfig


def learning_rate_schedule(optim: OptimConfig, total_updates: int) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, optim.learning_rate, max(optim.warmup_steps, 1))
    decay_steps = max(total_updates - optim.warmup_steps, 1)
    final = optim.learning_rate * optim.min_lr_ratio
    if optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(optim.learning_rate, decay_steps, alpha=optim.min_lr_ratio)
    elif optim.schedule == "linear":
        decay = optax.linear_schedule(optim.learning_rate, final, decay_steps)
    else:
        decay = optax.constant_schedule(optim.learning_rate)
    return optax.join_schedules([warmup, decay], [optim.warmup_steps])


def make_optimizer(optim: OptimConfig, total_updates: int):
    """(optax transformation, its learning-rate schedule) for `total_updates` optimizer updates."""
    schedule = learning_rate_schedule(optim, total_updates)
    transformation = optax.chain(
        optax.clip_by_global_norm(optim.max_grad_norm),
        optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay),
    )
    return transformation, schedule
