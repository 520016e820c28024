"""`rlreason bench`: times the GRPO step, whole and split into sampling, scoring and update.

Without `train.model_dir` it benchmarks a randomly initialised model of `cfg.model` with a tokenizer trained
on the task corpus (sampling then runs to max_completion_length more often than a trained model would).
Prints one line per figure and a final JSON line; also the per-device parameter + optimizer bytes, so that
FSDP's saving can be read off (compare `mesh.fsdp=8` with one device).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time

import jax

from rlreason.config import Config
from rlreason.data import synthetic
from rlreason.models.store import save_model
from rlreason.models.transformer import init_params
from rlreason.parallel.memory import max_device_bytes
from rlreason.train.loop import build_trainer
from rlreason.train.pretrain import corpus_texts, tokenizer_for

TIMED_STEPS = 5


def _random_model_dir(cfg: Config, directory: str) -> str:
    pairs = corpus_texts(cfg, synthetic.generate(cfg.task, cfg.tokenizer.train_corpus_size, cfg.task.seed))
    save_model(directory, init_params(cfg.model, jax.random.key(cfg.train.seed)), cfg.model, tokenizer_for(cfg, pairs))
    return directory


def _timed(function, *args):
    start = time.perf_counter()
    result = jax.block_until_ready(function(*args))
    return result, time.perf_counter() - start


def _tree_bytes(tree) -> int:
    return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))


def run_bench(cfg: Config) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = cfg.train.model_dir or _random_model_dir(cfg, scratch)
        figures = {"fused": [], "rollout": [], "score": [], "learn": [], "tokens": []}
        for split in (False, True):
            run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, model_dir=model_dir, split_step=split, steps=TIMED_STEPS + 1))
            trainer = build_trainer(run_cfg)
            state = trainer.state
            batches = [trainer.prompt_batch(next(trainer.batches)) for _ in range(TIMED_STEPS + 1)]
            if not split:
                state, first_step_s = _timed(lambda s, b: trainer.step_fn(s, b)[0], state, batches[0])
                for batch in batches[1:]:
                    (state, metrics, _), seconds = _timed(trainer.step_fn, state, batch)
                    figures["fused"].append(seconds)
                    figures["tokens"].append(float(metrics["completion_tokens"]))
                state_bytes = {"params": max_device_bytes(state.params), "opt_state": max_device_bytes(state.opt_state),
                               "params_total": _tree_bytes(state.params), "opt_state_total": _tree_bytes(state.opt_state)}
                continue
            rollout, score = jax.jit(trainer.functions.rollout), jax.jit(trainer.functions.score)
            learn = jax.jit(trainer.functions.learn, donate_argnums=0)
            for index, batch in enumerate(batches):
                rng, sample_rng = jax.random.split(state.rng)
                roll, rollout_s = _timed(rollout, state.params, batch, sample_rng)
                golds = jax.numpy.repeat(batch["gold_bytes"], cfg.grpo.num_generations, axis=0)
                rewards, score_s = _timed(score, roll, golds)
                (state, _), learn_s = _timed(learn, state.replace(rng=rng), roll, rewards)
                if index:  # the first call of each phase compiles
                    figures["rollout"].append(rollout_s)
                    figures["score"].append(score_s)
                    figures["learn"].append(learn_s)
    median = {key: statistics.median(values) for key, values in figures.items()}
    rows = cfg.train.batch_size * cfg.grpo.num_generations
    result = {
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "mesh": dict(trainer.mesh.shape),
        "rollouts_per_step": rows,
        "first_step_s": round(first_step_s, 3),
        "median_step_s": round(median["fused"], 4),
        "median_rollout_s": round(median["rollout"], 4),
        "median_score_s": round(median["score"], 4),
        "median_update_s": round(median["learn"], 4),
        "completion_tokens_per_s": round(median["tokens"] / median["fused"], 1),
        "params_bytes_per_device": state_bytes["params"],
        "opt_state_bytes_per_device": state_bytes["opt_state"],
        "params_plus_opt_bytes_one_device": state_bytes["params_total"] + state_bytes["opt_state_total"],
        "loadavg_1m": os.getloadavg()[0],
    }
    print(f"GRPO step on {result['device']}, mesh {result['mesh']}, {rows} rollouts/step "
          f"(median of {TIMED_STEPS} steps after compile)")
    print(f"  whole step (one program) {result['median_step_s']:.3f} s   first step (compile) {first_step_s:.1f} s")
    print(f"  split: sampling {result['median_rollout_s']:.3f} s   scoring {result['median_score_s']:.3f} s   "
          f"update {result['median_update_s']:.3f} s")
    print(f"  completion tokens/s {result['completion_tokens_per_s']:.0f}")
    print(f"  per-device params {state_bytes['params']:,} B + optimizer {state_bytes['opt_state']:,} B "
          f"(one device would hold {result['params_plus_opt_bytes_one_device']:,} B)")
    busy = result["loadavg_1m"] > (os.cpu_count() or 1)
    print(f"  1-min load average {result['loadavg_1m']:.2f}"
          + (" (above the core count: other work competed, figures are pessimistic)" if busy else ""))
    print(json.dumps(result))
    return result
