"""`rlreason train`: the GRPO step run over a prompt stream, with metrics, samples, checkpoints and a progress bar.

Writes into `train.out_dir`:
  metrics.jsonl   one JSON object per step (the step's metrics plus step_time_s and tokens_per_s)
  samples.jsonl   a few prompt / completion / reward rows every `train.sample_every` steps
  eval/           every `train.eval_every` steps and after the last: eval.sets' summaries and samples (layout in
                  rlreason.train.evaluate), their summaries also in metrics.jsonl as eval/<set>/<metric>
  config.yaml     the resolved configuration
  checkpoints/    the run's checkpoints (`checkpoint.*`, see rlreason.train.checkpoint)
  model/          the trained policy as a model directory (rlreason sample / eval read it)

Resuming: when the checkpoint directory holds checkpoints, `train` continues from the newest one that restores:
the state, the prompt stream's position, and metrics.jsonl, samples.jsonl and eval/ cut back to its step (rows
written after it are dropped, so no step appears twice). With the same config, a run killed and resumed computes
exactly what an uninterrupted one does. An out_dir that holds the logs or model of an earlier run but no
checkpoint to resume it from is refused rather than overwritten.

Stopping early, always after saving a checkpoint, raises a `RunStopped` whose `exit_code` the CLI returns:
  `Preempted` (75, EX_TEMPFAIL)  SIGTERM or SIGINT (Ctrl-C): the step in flight finishes, then the run saves
                                 and stops; rerun the same command to resume. A second Ctrl-C aborts at once
                                 (exit 130, see rlreason.train.preemption).
  `Diverged` (3)                 `train.max_nonfinite_steps` steps in a row had a NaN/Inf loss or gradient
                                 norm. Their updates were skipped, so the checkpoint holds the last good params.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from typing import Callable, Iterator

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh

from rlreason.config import Config, ConfigError, ModelConfig, RewardConfig, save_config
from rlreason.data.encoding import load_prompts
from rlreason.data.pipeline import prompt_batches
from rlreason.models.store import load_model, load_model_config, load_model_tokenizer, run_model_config, save_model
from rlreason.models.transformer import init_params
from rlreason.parallel.distributed import initialize, is_main_process
from rlreason.parallel.host_data import gather_rows, global_batch, process_rows, trim_prompt_padding
from rlreason.parallel.mesh import make_mesh
from rlreason.models.lora import (adapter_specs, base_specs, check_quantizable, init_adapters, merge_adapters,
                                  quantize_base)
from rlreason.parallel.rules import (axis_rules, batch_shards, model_layout, opt_state_shardings, param_shardings,
                                     replicated, spec_shardings)
from rlreason.parallel.sharded_init import init_params_sharded
from rlreason.progress import progress_bar
from rlreason.rl.step import (GRPOFunctions, ProcessReward, Refill, TrainState, compile_grpo, init_train_state,
                              make_grpo_functions)
from rlreason.sampling.sampler import SamplingParams
from rlreason.search.prm import check_same_tokenizer, load_prm
from rlreason.search.rollouts import make_search_rollout
from rlreason.search.steps import delimiter_table
from rlreason.sampling.tools import make_tool_turns
from rlreason.storage import is_url, storage_path
from rlreason.tokenizers import Tokenizer, load_tokenizer
from rlreason.train.checkpoint import CheckpointError, RunCheckpoints, checkpoint_dir
from rlreason.train.evaluate import build_evaluator, cut_results, eval_metric_names, eval_metrics, write_results
from rlreason.train.flops import grpo_step_flops, run_peak_flops
from rlreason.train.jsonl import rows_through, write_rows
from rlreason.train.optim import make_optimizer
from rlreason.train.preemption import StopSignals, any_process
from rlreason.train.preflight import check_batch_geometry, check_best_metric, check_reward_names, check_tokenizer
from rlreason.train.writers import open_writers
from rlreason.verifiers.bridge import make_scorer, take_verifier_metrics
from rlreason.verifiers.lenient import metric_only_functions
from rlreason.verifiers.tokens import TOKEN_REWARDS, make_token_scorer

SAMPLES_PER_LOG = 4
TIMING_KEYS = ("step_time_s", "tokens_per_s", "mfu")  # the metrics that differ between runs computing the same thing

logger = logging.getLogger("rlreason.train")


class RunStopped(RuntimeError):
    """The run stopped before train.steps, after saving a checkpoint; `exit_code` tells a scheduler why."""

    exit_code = 1


class Preempted(RunStopped):
    exit_code = 75  # EX_TEMPFAIL: a temporary failure; running the same command again resumes


class Diverged(RunStopped):
    exit_code = 3


@dataclasses.dataclass
class Trainer:
    """Everything a GRPO run needs, built once from the config."""

    cfg: Config
    tokenizer: Tokenizer
    model_cfg: ModelConfig
    mesh: Mesh
    state: TrainState  # the initial state, or only its jax.ShapeDtypeStruct leaves (build_trainer(abstract_state))
    functions: GRPOFunctions  # the step's phases, uncompiled
    step_fn: Callable  # (state, global prompt batch) -> (state, metrics, Samples), compiled
    batches: Iterator  # this process's prompt rows, as numpy batches
    skipped_rows: int  # malformed training rows left out (task.on_bad_row: skip)
    prompt_batch: Callable  # this process's numpy rows -> the global prompt batch


def load_policy_config(cfg: Config) -> tuple[ModelConfig, Tokenizer, str]:
    """(ModelConfig, Tokenizer, where they came from) of train.model_dir, or of model.* and tokenizer.path for a
    random init; reads no weights."""
    if cfg.train.model_dir:
        stored, tokenizer_file = load_model_config(cfg.train.model_dir)
        return (run_model_config(stored, cfg.model, cfg.train.model_dir),
                load_model_tokenizer(cfg.train.model_dir, tokenizer_file), cfg.train.model_dir)
    if not cfg.tokenizer.path:
        raise ConfigError("config key 'train.model_dir' is empty and so is 'tokenizer.path': give a model directory "
                          "to start from (rlreason pretrain or rlreason convert makes one)")
    return cfg.model, load_tokenizer(cfg.tokenizer.path), cfg.tokenizer.path


def initial_params(cfg: Config, model_cfg: ModelConfig, shardings):
    """The params to start from, placed by `shardings`: train.model_dir's weights, or a random init."""
    if cfg.train.model_dir:
        return load_model(cfg.train.model_dir, shardings=shardings, run=cfg.model)[0]
    return init_params_sharded(model_cfg, jax.random.key(cfg.train.seed), shardings)


def abstract_on(shapes, layout):
    """jax.ShapeDtypeStruct leaves of `shapes` (a tree of them, as jax.eval_shape gives) placed by `layout`, a
    tree of shardings: what RunCheckpoints.restore fills in."""
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        shapes, layout)


def full_state(cfg: Config, model_cfg: ModelConfig, optimizer, mesh: Mesh, rules, abstract_state: bool):
    """(the TrainState's layout, the initial state) of full fine-tuning: every weight trains, and grpo.beta > 0
    keeps a reference copy. `abstract_state`: the state's leaves are shapes only (see build_trainer)."""
    parameter_layout = param_shardings(model_cfg, mesh, rules)
    layout = TrainState(step=replicated(mesh), params=parameter_layout,
                        opt_state=opt_state_shardings(optimizer, model_cfg, mesh, rules),
                        ref_params=parameter_layout if cfg.grpo.beta > 0 else None, rng=replicated(mesh))
    initial = functools.partial(init_train_state, optimizer=optimizer, keep_reference=cfg.grpo.beta > 0)
    rng = jax.random.key(cfg.train.seed)
    if abstract_state:
        return layout, abstract_on(jax.eval_shape(lambda rng: initial(init_params(model_cfg, rng), rng=rng), rng),
                                   layout)
    return layout, initial(initial_params(cfg, model_cfg, parameter_layout), rng=rng, shardings=layout)


def lora_state(cfg: Config, model_cfg: ModelConfig, optimizer, mesh: Mesh, rules, abstract_state: bool):
    """(the TrainState's layout, the initial state) of LoRA (rlreason.models.lora): the params are fresh adapters
    (from key(train.seed) folded with 1), the base is the starting model with its projections quantized per
    lora.base_quantization. The base is read even when the state is abstract: checkpoints do not hold it."""
    lora = cfg.lora
    check_quantizable(model_cfg, lora)
    adapters = adapter_specs(model_cfg, lora)
    adapter_layout, base_layout = spec_shardings(adapters, mesh, rules), spec_shardings(base_specs(model_cfg, lora),
                                                                                         mesh, rules)
    layout = TrainState(step=replicated(mesh), params=adapter_layout,
                        opt_state=opt_state_shardings(optimizer, model_cfg, mesh, rules, trained=adapters),
                        ref_params=None, rng=replicated(mesh), base=base_layout)
    base = jax.jit(functools.partial(quantize_base, lora=lora), out_shardings=base_layout)(
        initial_params(cfg, model_cfg, param_shardings(model_cfg, mesh, rules)))
    initial = functools.partial(init_train_state, optimizer=optimizer, keep_reference=False)
    rng = jax.random.key(cfg.train.seed)
    fresh_adapters = functools.partial(init_adapters, model_cfg, lora)
    if abstract_state:
        shapes = jax.eval_shape(lambda rng: initial(fresh_adapters(rng), rng=rng), rng)
        return layout, abstract_on(shapes, layout.replace(base=None)).replace(base=base)
    params = jax.jit(fresh_adapters, out_shardings=adapter_layout)(jax.random.fold_in(rng, 1))
    # The base is attached after the jitted init, not passed through it, which would copy it.
    return layout, initial(params, rng=rng, shardings=layout.replace(base=None)).replace(base=base)


def final_params(trainer: Trainer, state: TrainState):
    """The trained policy as plain params for the run's model directory: a LoRA run's adapters merged into its
    (dequantized) base, in the parameter dtype."""
    if state.base is None:
        return state.params
    merge = functools.partial(merge_adapters, dtype=jax.numpy.dtype(trainer.model_cfg.param_dtype))
    layout = param_shardings(trainer.model_cfg, trainer.mesh, axis_rules(trainer.cfg.mesh))
    return jax.jit(merge, out_shardings=layout)(trainer.functions.policy(state))


def build_trainer(cfg: Config, abstract_state: bool = False) -> Trainer:
    """Builds the run, checking its inputs before weights are read or anything compiles.

    `abstract_state`: `Trainer.state` holds only the state's shapes, dtypes and shardings on this run's mesh
    (nothing is read or initialised), for `RunCheckpoints.restore` to fill in.
    """
    initialize(cfg.distributed)
    mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
    check_batch_geometry(cfg, mesh, rules)
    check_reward_names(cfg)
    model_cfg, tokenizer, source = load_policy_config(cfg)
    check_tokenizer(cfg, tokenizer, source)
    grpo = cfg.grpo
    updates = cfg.train.steps * grpo.num_iterations * grpo.num_minibatches
    optimizer, schedule = make_optimizer(grpo.optim, updates)
    state_layout, state = (lora_state if cfg.lora.rank else full_state)(cfg, model_cfg, optimizer, mesh, rules,
                                                                         abstract_state)
    process_reward = None
    if grpo.process_reward:
        prm = load_prm(grpo.process_reward, mesh, rules)
        check_same_tokenizer(prm, tokenizer, "grpo.process_reward", grpo.process_reward)
        process_reward = ProcessReward(prm.cfg, delimiter_table(tokenizer, prm.delimiter), grpo.process_reward_weight)
        weights = (prm.params, prm.head)
        state_layout = state_layout.replace(process_reward_model=jax.tree.map(lambda leaf: leaf.sharding, weights))
        state = state.replace(process_reward_model=weights)
    # Scored after the rewards, for the strict / lenient accuracy metrics only (weight 0, never in the reward).
    # Scored on tokens (grpo.scoring=jax), only those with a token-level version: no lenient check.
    scored = grpo.rewards + tuple(RewardConfig(name, weight=0.0) for name in metric_only_functions(
        [reward.name for reward in grpo.rewards], grpo.accuracy_reward)
        if grpo.scoring == "callback" or name in TOKEN_REWARDS)
    if grpo.scoring == "jax":
        scorer = make_token_scorer(tokenizer, [reward.name for reward in scored])
    else:
        scorer = make_scorer(tokenizer, scored, grpo.verifier_timeout_s, mesh=mesh, rules=rules,
                             deadline_s=grpo.verifier_batch_deadline_s, memory_limit_mb=grpo.verifier_memory_mb,
                             raise_pool_errors=False)
    functions = make_grpo_functions(
        grpo, model_cfg, SamplingParams.from_config(cfg.sampling), optimizer, scorer,
        stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
        reward_names=tuple(reward.name for reward in scored), accuracy_reward=grpo.accuracy_reward,
        learning_rate_fn=schedule, tools=make_tool_turns(cfg.sampling.tools, tokenizer),
        arrays=model_layout(mesh, rules), lora=cfg.lora,
        state_sharding=lambda new_state: jax.lax.with_sharding_constraint(new_state, state_layout),
        process_reward=process_reward, row_shards=batch_shards(mesh, rules))
    prompts = load_prompts(cfg.task, "train", cfg.task.num_train, tokenizer, cfg.tokenizer.template,
                           cfg.sampling.max_prompt_length)
    batches = prompt_batches(prompts, cfg.train.batch_size, seed=cfg.train.seed,
                             rows=process_rows(mesh, cfg.train.batch_size, rules))
    def prompt_batch(rows):
        if cfg.sampling.prompt_bucket:
            rows = trim_prompt_padding(rows, cfg.sampling.prompt_bucket)
        return global_batch(rows, mesh, cfg.train.batch_size, rules)

    refill = (Refill(lambda: prompt_batch(next(batches)), grpo.max_sampling_draws)
              if grpo.dynamic_sampling == "refill" else None)
    search_rollout = None
    if grpo.rollout_source == "mcts":
        search_rollout = make_search_rollout(model_cfg, tokenizer, cfg.search, SamplingParams.from_config(cfg.sampling),
                                             grpo.accuracy_reward, grpo.num_generations, mesh, rules)
    step_fn = compile_grpo(functions, grpo.num_generations, cfg.train.split_step, refill, search_rollout)
    return Trainer(cfg, tokenizer, model_cfg, mesh, state, functions, step_fn, batches, prompts.skipped_rows,
                   prompt_batch)


def step_metric_names(trainer: Trainer, state: TrainState) -> list[str]:
    """The names of the step's metrics, from tracing the step on the next batch: nothing runs or compiles, and
    the prompt stream is put back where it was."""
    position = trainer.batches.get_state()
    batch = trainer.prompt_batch(next(trainer.batches))
    trainer.batches.set_state(position)
    return list(jax.eval_shape(trainer.functions.step, state, batch)[1])


def step_model_flops(cfg: Config, model_cfg: ModelConfig, batch, metrics: dict) -> int:
    """The model FLOPs of the step that gave `metrics` (rlreason.train.flops), decoding as long as its longest
    completion. With dynamic sampling's extra draws it counts one draw: MFU then understates the work done."""
    rows = batch["prompt_tokens"].shape[0] * cfg.grpo.num_generations
    return grpo_step_flops(model_cfg, rows, batch["prompt_tokens"].shape[1], round(metrics["completion_length_max"]),
                           cfg.grpo.beta > 0, cfg.grpo.num_iterations, weight_gradients=not cfg.lora.rank)["total"]


def sample_rows(tokenizer: Tokenizer, samples, reward_names: list[str], step: int) -> list[dict]:
    """The first rows of a step's samples as JSON-able dicts with each reward function's score and the row's
    advantage."""
    roll, rows = samples.rollout, []
    for row in range(min(SAMPLES_PER_LOG, roll.tokens.shape[0])):
        rewards = {name: (None if np.isnan(value) else float(value))
                   for name, value in zip(reward_names, samples.rewards[row])}
        rows.append({"step": step, "prompt": tokenizer.decode(roll.prompt_tokens[row][roll.prompt_mask[row] > 0]),
                     "completion": tokenizer.decode(roll.tokens[row][roll.completion_mask[row] > 0]),
                     "length": int(roll.completion_mask[row].sum()), "rewards": rewards,
                     "advantage": float(samples.advantages[row])})
    return rows


class RunLog:
    """metrics.jsonl and samples.jsonl of a run, and the writers of `train.report_to` (rlreason.train.writers),
    written by the main process only (which also cuts eval/ back on resume; the loop writes it).

    Resuming from step S keeps their rows up to S and appends after them; `history` holds the kept metric rows.
    """

    def __init__(self, cfg: Config, out_dir: epath.Path, enabled: bool, resumed_step: int | None):
        self.enabled = enabled
        self.writers = open_writers(cfg, out_dir) if enabled else []
        paths = (out_dir / "metrics.jsonl", out_dir / "samples.jsonl")
        kept = [rows_through(path, resumed_step) if resumed_step is not None else [] for path in paths]
        self.history = kept[0]
        self.metrics = self.samples = None  # open on the main process only; `write` skips them elsewhere
        if enabled:
            if resumed_step is not None:
                for path, rows in zip(paths, kept):
                    write_rows(path, rows)
                cut_results(out_dir, resumed_step)
            mode = "w" if resumed_step is None else "a"
            self.metrics, self.samples = (path.open(mode) for path in paths)

    def _append(self, file, rows: list[dict]) -> None:
        if self.enabled:
            file.writelines(json.dumps(row) + "\n" for row in rows)
            file.flush()

    def write_metrics(self, metrics: dict) -> None:
        self._append(self.metrics, [metrics])
        for writer in self.writers:
            writer.metrics(metrics["step"], metrics)

    def write_samples(self, step: int, rows: list[dict]) -> None:
        self._append(self.samples, rows)
        for writer in self.writers:
            writer.samples(step, rows)

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
            self.samples.close()
        for writer in self.writers:
            writer.close()


def eval_due(cfg: Config, step: int) -> bool:
    """An evaluation after `step`: every train.eval_every steps and after the last step (0: never)."""
    every = cfg.train.eval_every
    return every > 0 and (step % every == 0 or step == cfg.train.steps)


def checkpoint_due(cfg: Config, step: int, time_due: bool) -> bool:
    """A save at `step` by schedule: every checkpoint.every_steps steps, after the last step, or when
    checkpoint.every_seconds have passed (`time_due`, agreed by every process)."""
    every = cfg.checkpoint.every_steps
    return step == cfg.train.steps or (every > 0 and step % every == 0) or time_due


def end_step(cfg: Config, step: int, metrics: dict, state: TrainState, batches, checkpoints: RunCheckpoints,
             stop_signals: StopSignals, nonfinite_streak: int) -> int:
    """After step `step`: counts its skipped (non-finite) updates, saves a checkpoint when one is due, and stops
    the run, saved, on SIGTERM / SIGINT or after too many non-finite steps in a row. Returns the new non-finite
    streak."""
    skipped = int(metrics["nonfinite_updates"])
    nonfinite_streak = nonfinite_streak + 1 if skipped else 0
    if skipped:
        logger.warning("step %d: %d update(s) had a non-finite loss or gradient norm and were skipped (%d such "
                       "step(s) in a row; the run stops at train.max_nonfinite_steps=%d)", step, skipped,
                       nonfinite_streak, cfg.train.max_nonfinite_steps)
    diverged = nonfinite_streak >= cfg.train.max_nonfinite_steps
    preempted, time_due = any_process([stop_signals.requested, checkpoints.time_due()])
    if preempted or diverged or checkpoint_due(cfg, step, time_due):
        checkpoints.save(step, state, batches, metrics)
    if preempted:
        received = stop_signals.received or "a stop signal (SIGTERM or SIGINT)"
        raise Preempted(f"{received} received by a process of the run: stopped after step {step} of "
                        f"{cfg.train.steps} and saved checkpoint {checkpoints.path(step)}; run the same command "
                        f"again to resume")
    if diverged:
        raise Diverged(f"the last {nonfinite_streak} steps (to step {step}) had a NaN/Inf loss or gradient norm "
                       f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); their updates were skipped, so "
                       f"checkpoint {checkpoints.path(step)} holds the last good params. Lower "
                       f"grpo.optim.learning_rate, or check the reward functions for NaN/Inf values")
    return nonfinite_streak


EARLIER_RUN_FILES = ("metrics.jsonl", "samples.jsonl", "eval", "model")  # what a new run in an out_dir would overwrite


def refuse_to_overwrite(out_dir: epath.Path, checkpoints: RunCheckpoints) -> None:
    """Raises CheckpointError when `out_dir` holds files of an earlier run (EARLIER_RUN_FILES) but there is no
    checkpoint to resume that run from: a new run would overwrite them. Collective: the main process looks (it
    writes those files), every process raises."""
    found = [name for name in EARLIER_RUN_FILES if (out_dir / name).exists()] if is_main_process() else []
    if any_process([bool(found)])[0]:
        raise CheckpointError(f"train.out_dir {str(out_dir)!r} holds {', '.join(found) or 'files'} of an earlier run, "
                              f"but {str(checkpoints.directory)!r} holds no checkpoint to resume it from, and a new "
                              f"run would overwrite them; set train.out_dir to a new directory, or move those files "
                              f"away to start afresh here")


@contextlib.contextmanager
def removed_if_left_empty(*directories: epath.Path) -> Iterator[None]:
    """Removes those of `directories` (and their parents) that did not exist before the block, when the block
    raises and leaves them empty: a run refused at its start leaves no empty out_dir or checkpoints/ behind.
    URLs are left alone: object stores hold no empty directories."""
    created = [path for directory in directories if not is_url(directory)
               for path in (directory, *directory.parents) if not path.exists()]
    try:
        yield
    except BaseException:
        for path in sorted(set(created), key=lambda path: len(path.parts), reverse=True):
            with contextlib.suppress(OSError):  # removed meanwhile by another process of the run
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        raise


@contextlib.contextmanager
def run_frame(cfg: Config) -> Iterator[tuple[StopSignals, RunCheckpoints]]:
    """The frame of a run in train.out_dir (GRPO or SFT): SIGTERM / SIGINT handling, the run's checkpoints, a
    refusal to overwrite an earlier run that no checkpoint can resume, and no empty directories left behind by
    a run refused at its start. Yields (stop signals, checkpoints); `checkpoints.last_step` is None for a new
    run."""
    out_dir = storage_path(cfg.train.out_dir)
    with (StopSignals() as stop_signals, removed_if_left_empty(out_dir, checkpoint_dir(cfg)),
          RunCheckpoints(cfg) as checkpoints):
        if checkpoints.last_step is None:
            refuse_to_overwrite(out_dir, checkpoints)
        yield stop_signals, checkpoints


def evaluation_if_due(cfg: Config, step: int, evaluator, params, out_dir: epath.Path) -> dict[str, float]:
    """After `step`: when an evaluation is due (eval_due), every process evaluates its share and the main one
    writes the results under out_dir/eval/; returns their metrics (eval/<set>/<key>), else {}."""
    if not eval_due(cfg, step):
        return {}
    results = evaluator.evaluate_all(params)
    if is_main_process():
        write_results(out_dir, step, results)
    return eval_metrics(results)


def train(cfg: Config, show_progress: bool = True):
    """Runs GRPO to `train.steps`, resuming from the run's newest checkpoint when there is one.

    Returns (final TrainState, Trainer, every step's metrics, resumed ones included). Raises RunStopped when a
    stop signal or non-finite steps stop the run early. Call it on the main thread: it handles SIGTERM and SIGINT
    while it runs.
    """
    initialize(cfg.distributed)
    out_dir = storage_path(cfg.train.out_dir)
    main_process = is_main_process()
    with run_frame(cfg) as (stop_signals, checkpoints):
        resuming = checkpoints.last_step is not None
        trainer = build_trainer(cfg, abstract_state=resuming)
        evaluator = (build_evaluator(cfg, trainer.model_cfg, trainer.tokenizer, trainer.mesh, axis_rules(cfg.mesh))
                     if cfg.train.eval_every else None)
        state, start = checkpoints.restore(trainer.state, trainer.batches) if resuming else (trainer.state, 0)
        if cfg.checkpoint.keep_best:
            evaluated = eval_metric_names(evaluator) if evaluator else []
            check_best_metric(cfg, step_metric_names(trainer, state) + evaluated)
        if main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out_dir / "config.yaml")
            if resuming:
                print(f"resuming from checkpoint {checkpoints.path(start)} (step {start} of {cfg.train.steps})")
        reward_names = [reward.name for reward in cfg.grpo.rewards]
        log = RunLog(cfg, out_dir, main_process, start if resuming else None)
        history, nonfinite_streak = log.history, 0
        peak_flops = run_peak_flops(jax.numpy.dtype(trainer.model_cfg.dtype))
        bar = progress_bar(range(start, cfg.train.steps), desc="grpo", initial=start, total=cfg.train.steps,
                           show=show_progress and main_process)
        with contextlib.closing(log), contextlib.closing(bar):
            for index in bar:
                step = index + 1
                batch = trainer.prompt_batch(next(trainer.batches))
                start_time = time.perf_counter()
                state, metrics, samples = trainer.step_fn(state, batch)
                metrics = {key: float(value) for key, value in jax.device_get(metrics).items()}
                metrics.update(take_verifier_metrics())  # this step's failed verifier calls, from every host
                elapsed = time.perf_counter() - start_time
                metrics.update(step=step, step_time_s=elapsed, tokens_per_s=metrics["completion_tokens"] / elapsed,
                               mfu=step_model_flops(cfg, trainer.model_cfg, batch, metrics) / elapsed / peak_flops)
                metrics["data/skipped_rows"] = trainer.skipped_rows
                metrics.update(evaluation_if_due(cfg, step, evaluator, trainer.functions.policy(state), out_dir))
                history.append(metrics)
                log.write_metrics(metrics)
                if cfg.train.sample_every and (index % cfg.train.sample_every == 0 or step == cfg.train.steps):
                    # Every process takes part in the gather; only the main one writes.
                    log.write_samples(step, sample_rows(trainer.tokenizer, gather_rows(samples), reward_names, step))
                bar.set_postfix(reward=f"{metrics['reward']:.2f}", acc=f"{metrics.get('accuracy', float('nan')):.2f}",
                                len=f"{metrics['completion_length']:.0f}", step_s=f"{elapsed:.2f}")
                nonfinite_streak = end_step(cfg, step, metrics, state, trainer.batches, checkpoints, stop_signals,
                                            nonfinite_streak)
        # Inside the signal handling: a stop signal now changes nothing (the last step is saved), so it waits.
        save_model(out_dir / "model", final_params(trainer, state), trainer.model_cfg, trainer.tokenizer)
    return state, trainer, history
