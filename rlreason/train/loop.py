"""`rlreason train`: the GRPO step run over a prompt stream, with metrics, samples and a progress bar.

Writes into `train.out_dir`:
  metrics.jsonl   one JSON object per step (the step's metrics plus step_time_s and tokens_per_s)
  samples.jsonl   a few prompt / completion / reward rows every `train.sample_every` steps
  config.yaml     the resolved configuration
  model/          the trained policy as a model directory (rlreason sample / eval read it)
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from rlreason.config import Config, save_config
from rlreason.data.encoding import load_prompts
from rlreason.data.pipeline import prompt_batches
from rlreason.models.store import load_model, save_model
from rlreason.models.transformer import init_params
from rlreason.rl.step import compile_grpo, init_train_state, make_grpo_functions
from rlreason.sampling.sampler import SamplingParams
from rlreason.tokenizers import Tokenizer
from rlreason.train.optim import make_optimizer
from rlreason.verifiers.bridge import make_scorer

SAMPLES_PER_LOG = 4


@dataclasses.dataclass
class Trainer:
    """Everything a GRPO run needs, built once from the config."""

    cfg: Config
    tokenizer: Tokenizer
    model_cfg: object
    state: object
    step_fn: object
    batches: object


def build_trainer(cfg: Config, params=None, tokenizer: Tokenizer | None = None) -> Trainer:
    """Loads the starting model (train.model_dir) unless `params` and `tokenizer` are given."""
    model_cfg = cfg.model
    if params is None:
        if cfg.train.model_dir:
            params, model_cfg, tokenizer = load_model(cfg.train.model_dir)
        else:
            if tokenizer is None:
                raise ValueError("train.model_dir is empty: give a model directory to start from "
                                 "(rlreason pretrain or rlreason convert makes one)")
            params = init_params(model_cfg, jax.random.key(cfg.train.seed))
    grpo = cfg.grpo
    updates = cfg.train.steps * grpo.num_iterations * grpo.num_minibatches
    optimizer, schedule = make_optimizer(grpo.optim, updates)
    scorer = make_scorer(tokenizer, grpo.rewards, grpo.verifier_timeout_s)
    functions = make_grpo_functions(
        grpo, model_cfg, SamplingParams.from_config(cfg.sampling), optimizer, scorer,
        stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id,
        reward_names=tuple(reward.name for reward in grpo.rewards), accuracy_reward=grpo.accuracy_reward,
        learning_rate_fn=schedule)
    # Committed placement from the start: otherwise the first step's outputs (committed) would not match its
    # inputs (uncommitted) and the second call would compile the step again.
    state = jax.device_put(init_train_state(params, optimizer, jax.random.key(cfg.train.seed),
                                            keep_reference=grpo.beta > 0), jax.devices()[0])
    prompts = load_prompts(cfg.task, "train", cfg.task.num_train, tokenizer, cfg.tokenizer.template,
                           cfg.sampling.max_prompt_length)
    batches = prompt_batches(prompts, cfg.train.batch_size, seed=cfg.train.seed)
    step_fn = compile_grpo(functions, grpo.num_generations, cfg.train.split_step)
    return Trainer(cfg, tokenizer, model_cfg, state, step_fn, batches)


def sample_rows(tokenizer: Tokenizer, samples, reward_names: list[str], step: int) -> list[dict]:
    """The first rows of a step's samples as JSON-able dicts with each reward function's score."""
    roll, rows = samples.rollout, []
    for row in range(min(SAMPLES_PER_LOG, roll.tokens.shape[0])):
        rewards = {name: (None if np.isnan(value) else float(value))
                   for name, value in zip(reward_names, samples.rewards[row])}
        rows.append({"step": step, "prompt": tokenizer.decode(roll.prompt_tokens[row][roll.prompt_mask[row] > 0]),
                     "completion": tokenizer.decode(roll.tokens[row][roll.completion_mask[row] > 0]),
                     "length": int(roll.completion_mask[row].sum()), "rewards": rewards})
    return rows


def train(cfg: Config, show_progress: bool = True, params=None, tokenizer: Tokenizer | None = None):
    """Runs `train.steps` GRPO steps; returns (final TrainState, Trainer, list of per-step metrics)."""
    out_dir = Path(cfg.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    trainer = build_trainer(cfg, params, tokenizer)
    state, history = trainer.state, []
    reward_names = [reward.name for reward in cfg.grpo.rewards]
    bar = tqdm(range(cfg.train.steps), desc="grpo", disable=not show_progress, dynamic_ncols=True)
    with open(out_dir / "metrics.jsonl", "w") as metrics_file, open(out_dir / "samples.jsonl", "w") as samples_file:
        for index in bar:
            batch = next(trainer.batches)
            start = time.perf_counter()
            state, metrics, samples = trainer.step_fn(state, batch)
            metrics = {key: float(value) for key, value in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - start
            metrics.update(step=index + 1, step_time_s=elapsed, tokens_per_s=metrics["completion_tokens"] / elapsed)
            history.append(metrics)
            metrics_file.write(json.dumps(metrics) + "\n")
            metrics_file.flush()
            if cfg.train.sample_every and (index % cfg.train.sample_every == 0 or index == cfg.train.steps - 1):
                for row in sample_rows(trainer.tokenizer, jax.device_get(samples), reward_names, index + 1):
                    samples_file.write(json.dumps(row) + "\n")
                samples_file.flush()
            bar.set_postfix(reward=f"{metrics['reward']:.2f}", acc=f"{metrics.get('accuracy', float('nan')):.2f}",
                            len=f"{metrics['completion_length']:.0f}", step_s=f"{elapsed:.2f}")
    bar.close()
    save_model(out_dir / "model", jax.device_get(state.params), trainer.model_cfg, trainer.tokenizer)
    return state, trainer, history
