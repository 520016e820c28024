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
from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from rlreason.config import Config, ConfigError, ModelConfig, save_config
from rlreason.data.encoding import load_prompts
from rlreason.data.pipeline import prompt_batches
from rlreason.models.store import load_model, load_model_config, save_model
from rlreason.parallel.distributed import initialize, is_main_process
from rlreason.parallel.host_data import gather_rows, global_batch, process_rows
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules, batch_sharding, opt_state_shardings, param_shardings, replicated
from rlreason.parallel.sharded_init import init_params_sharded
from rlreason.rl.step import GRPOFunctions, TrainState, compile_grpo, init_train_state, make_grpo_functions
from rlreason.sampling.sampler import SamplingParams
from rlreason.tokenizers import Tokenizer, load_tokenizer
from rlreason.train.optim import make_optimizer
from rlreason.verifiers.bridge import make_scorer

SAMPLES_PER_LOG = 4


@dataclasses.dataclass
class Trainer:
    """Everything a GRPO run needs, built once from the config."""

    cfg: Config
    tokenizer: Tokenizer
    model_cfg: ModelConfig
    mesh: Mesh
    state: TrainState
    functions: GRPOFunctions  # the step's phases, uncompiled
    step_fn: Callable  # (state, global prompt batch) -> (state, metrics, Samples), compiled
    batches: Iterator  # this process's prompt rows, as numpy batches
    skipped_rows: int  # malformed training rows left out (task.on_bad_row: skip)
    prompt_batch: Callable  # this process's numpy rows -> the global prompt batch


def load_policy(cfg: Config, mesh: Mesh, rules):
    """(params placed by the sharding rules, ModelConfig, Tokenizer) from train.model_dir, or a random init."""
    if cfg.train.model_dir:
        model_cfg, _ = load_model_config(cfg.train.model_dir)
        return load_model(cfg.train.model_dir, shardings=param_shardings(model_cfg, mesh, rules))
    if not cfg.tokenizer.path:
        raise ConfigError("config key 'train.model_dir' is empty and so is 'tokenizer.path': give a model directory "
                          "to start from (rlreason pretrain or rlreason convert makes one)")
    params = init_params_sharded(cfg.model, jax.random.key(cfg.train.seed), param_shardings(cfg.model, mesh, rules))
    return params, cfg.model, load_tokenizer(cfg.tokenizer.path)


def build_trainer(cfg: Config) -> Trainer:
    initialize(cfg.distributed)
    mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
    params, model_cfg, tokenizer = load_policy(cfg, mesh, rules)
    grpo = cfg.grpo
    updates = cfg.train.steps * grpo.num_iterations * grpo.num_minibatches
    optimizer, schedule = make_optimizer(grpo.optim, updates)
    parameter_layout = param_shardings(model_cfg, mesh, rules)
    state_layout = TrainState(step=replicated(mesh), params=parameter_layout,
                              opt_state=opt_state_shardings(optimizer, model_cfg, mesh, rules),
                              ref_params=parameter_layout if grpo.beta > 0 else None, rng=replicated(mesh))
    state = init_train_state(params, optimizer, jax.random.key(cfg.train.seed), grpo.beta > 0, state_layout)
    rows_layout = lambda tree: jax.tree.map(  # noqa: E731
        lambda leaf: jax.lax.with_sharding_constraint(leaf, batch_sharding(mesh, leaf.ndim, rules)), tree)
    functions = make_grpo_functions(
        grpo, model_cfg, SamplingParams.from_config(cfg.sampling), optimizer,
        make_scorer(tokenizer, grpo.rewards, grpo.verifier_timeout_s, mesh=mesh),
        stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id,
        reward_names=tuple(reward.name for reward in grpo.rewards), accuracy_reward=grpo.accuracy_reward,
        learning_rate_fn=schedule, row_sharding=rows_layout,
        state_sharding=lambda new_state: jax.lax.with_sharding_constraint(new_state, state_layout))
    rows_here = process_rows(mesh, cfg.train.batch_size, rules)
    # Where the batch is split across processes, each loads its own share of the prompts; otherwise all load all.
    shards = (jax.process_index(), jax.process_count()) if rows_here.stop - rows_here.start < cfg.train.batch_size \
        else (0, 1)
    prompts = load_prompts(cfg.task, "train", cfg.task.num_train, tokenizer, cfg.tokenizer.template,
                           cfg.sampling.max_prompt_length)
    batches = prompt_batches(prompts, rows_here.stop - rows_here.start, seed=cfg.train.seed,
                             process_index=shards[0], process_count=shards[1])
    step_fn = compile_grpo(functions, grpo.num_generations, cfg.train.split_step)
    return Trainer(cfg, tokenizer, model_cfg, mesh, state, functions, step_fn, batches, prompts.skipped_rows,
                   lambda rows: global_batch(rows, mesh, cfg.train.batch_size, rules))


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


class RunLog:
    """metrics.jsonl and samples.jsonl of a run, written by the main process only."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.metrics = open(out_dir / "metrics.jsonl", "w") if enabled else None
        self.samples = open(out_dir / "samples.jsonl", "w") if enabled else None

    def write(self, file, rows: list[dict]) -> None:
        if self.enabled:
            file.writelines(json.dumps(row) + "\n" for row in rows)
            file.flush()

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
            self.samples.close()


def train(cfg: Config, show_progress: bool = True):
    """Runs `train.steps` GRPO steps; returns (final TrainState, Trainer, list of per-step metrics)."""
    out_dir = Path(cfg.train.out_dir)
    main_process = is_main_process()
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    trainer = build_trainer(cfg)
    state, history = trainer.state, []
    reward_names = [reward.name for reward in cfg.grpo.rewards]
    log = RunLog(out_dir, main_process)
    bar = tqdm(range(cfg.train.steps), desc="grpo", disable=not (show_progress and main_process),
               dynamic_ncols=True)
    for index in bar:
        batch = trainer.prompt_batch(next(trainer.batches))
        start = time.perf_counter()
        state, metrics, samples = trainer.step_fn(state, batch)
        metrics = {key: float(value) for key, value in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - start
        metrics.update(step=index + 1, step_time_s=elapsed, tokens_per_s=metrics["completion_tokens"] / elapsed)
        metrics["data/skipped_rows"] = trainer.skipped_rows
        history.append(metrics)
        log.write(log.metrics, [metrics])
        if cfg.train.sample_every and (index % cfg.train.sample_every == 0 or index == cfg.train.steps - 1):
            # Every process takes part in the gather; only the main one writes.
            log.write(log.samples, sample_rows(trainer.tokenizer, gather_rows(samples), reward_names, index + 1))
        bar.set_postfix(reward=f"{metrics['reward']:.2f}", acc=f"{metrics.get('accuracy', float('nan')):.2f}",
                        len=f"{metrics['completion_length']:.0f}", step_s=f"{elapsed:.2f}")
    bar.close()
    log.close()
    save_model(out_dir / "model", state.params, trainer.model_cfg, trainer.tokenizer)
    return state, trainer, history
