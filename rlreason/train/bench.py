"""`rlreason bench`: times the GRPO step, whole and split into sampling, scoring, the reference pass and update.

Without `train.model_dir` it benchmarks a randomly initialised model of `cfg.model` with a tokenizer trained
on the task corpus (sampling then runs to max_completion_length more often than a trained model would).
Prints one line per figure and a final JSON line; also the per-device parameter + optimizer bytes, so that
FSDP's saving can be read off (compare `mesh.fsdp=8` with one device), the step's model FLOPs
(rlreason.train.flops), the achieved GFLOP/s and MFU against a matmul peak measured in the same run on the same
device and dtype, and the peak memory (the device's allocator where it reports one, else the process's RSS).

`rlreason bench --memory` (`run_memory`) compiles the step without running it or reading any weights and prints
the compiled program's memory per device: will a config fit its accelerator, before anything is launched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import jax

from rlreason.config import Config
from rlreason.data import synthetic
from rlreason.huge_pages import huge_pages_on
from rlreason.models.store import save_model
from rlreason.models.transformer import init_params
from rlreason.parallel.memory import max_device_bytes
from rlreason.progress import progress_bar
from rlreason.tokenizers import Tokenizer
from rlreason.train.compile_cache import cache_counts
from rlreason.train.flops import grpo_step_flops, run_peak_flops
from rlreason.train.loop import build_trainer
from rlreason.train.pretrain import corpus_texts, tokenizer_for

TIMED_STEPS = 5


def _task_tokenizer(cfg: Config) -> Tokenizer:
    """tokenizer.path's tokenizer, or one trained on the task corpus."""
    return tokenizer_for(cfg, corpus_texts(cfg, synthetic.generate(cfg.task, cfg.tokenizer.train_corpus_size,
                                                                   cfg.task.seed)))


def _random_model_dir(cfg: Config, directory: str) -> str:
    save_model(directory, init_params(cfg.model, jax.random.key(cfg.train.seed)), cfg.model, _task_tokenizer(cfg))
    return directory


def _timed(function, *args):
    start = time.perf_counter()
    result = jax.block_until_ready(function(*args))
    return result, time.perf_counter() - start


def _tree_bytes(tree) -> int:
    return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))


def cpu_model() -> str:
    """The host CPU's model name (from /proc/cpuinfo), recorded with every figure: step times depend on it."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def peak_memory_bytes() -> tuple[int, str]:
    """(peak bytes, what was measured): the first device's allocator peak, or this process's peak RSS on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def run_bench(cfg: Config, show_progress: bool = False) -> dict:
    """Times the step fused (one program) and split (three), TIMED_STEPS steps each after a compiling one;
    prints the figures and returns them. `show_progress`: a bar over the steps run (rlreason.progress)."""
    bar = progress_bar(total=2 * (TIMED_STEPS + 1), desc="bench", unit="step", show=show_progress)
    with tempfile.TemporaryDirectory() as scratch, bar:
        model_dir = cfg.train.model_dir or _random_model_dir(cfg, scratch)
        figures = {"fused": [], "rollout": [], "score": [], "reference": [], "learn": [], "tokens": [], "decoded": [],
                   "prompt_width": []}
        for split in (False, True):
            run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                cfg.train, model_dir=model_dir, split_step=split, steps=TIMED_STEPS + 1))
            trainer = build_trainer(run_cfg)
            state = trainer.state
            batches = [trainer.prompt_batch(next(trainer.batches)) for _ in range(TIMED_STEPS + 1)]
            if not split:
                state, first_step_s = _timed(lambda s, b: trainer.step_fn(s, b)[0], state, batches[0])
                bar.update()
                # With sampling.prompt_bucket the batches may come in several prompt widths, each compiled once:
                # one untimed step per further width, so that the timed steps compile nothing.
                for batch in {batch["prompt_tokens"].shape[1]: batch for batch in batches[1:]}.values():
                    if batch["prompt_tokens"].shape[1] != batches[0]["prompt_tokens"].shape[1]:
                        state = jax.block_until_ready(trainer.step_fn(state, batch)[0])
                for batch in batches[1:]:
                    (state, metrics, _), seconds = _timed(trainer.step_fn, state, batch)
                    figures["fused"].append(seconds)
                    figures["tokens"].append(float(metrics["completion_tokens"]))
                    figures["decoded"].append(float(metrics["completion_length_max"]))  # decode-loop steps
                    figures["prompt_width"].append(batch["prompt_tokens"].shape[1])
                    bar.update()
                    bar.set_postfix(step_s=f"{seconds:.2f}")
                state_bytes = {"params": max_device_bytes(state.params), "opt_state": max_device_bytes(state.opt_state),
                               "params_total": _tree_bytes(state.params), "opt_state_total": _tree_bytes(state.opt_state),
                               "base": max_device_bytes(state.base) if state.base is not None else 0}
                continue
            rollout, score = jax.jit(trainer.functions.rollout), jax.jit(trainer.functions.score)
            learn = jax.jit(trainer.functions.learn, donate_argnums=0)
            reference = jax.jit(trainer.functions.reference_logprobs)
            widths = [batch["prompt_tokens"].shape[1] for batch in batches]
            for index, batch in enumerate(batches):
                rng, sample_rng = jax.random.split(state.rng)
                roll, rollout_s = _timed(rollout, trainer.functions.policy(state), batch, sample_rng)
                golds = jax.numpy.repeat(batch["gold_bytes"], cfg.grpo.num_generations, axis=0)
                rewards, score_s = _timed(score, roll, golds)
                # The update makes this pass itself: timed apart, it says how much of the update it is.
                _, reference_s = _timed(reference, state, roll) if cfg.grpo.beta > 0 else (None, 0.0)
                (state, *_), learn_s = _timed(learn, state.replace(rng=rng), roll, rewards)
                bar.update()
                if widths[index] in widths[:index]:  # the first call of each phase at each prompt width compiles
                    figures["rollout"].append(rollout_s)
                    figures["score"].append(score_s)
                    figures["reference"].append(reference_s)
                    figures["learn"].append(learn_s)
    median = {key: statistics.median(values) for key, values in figures.items()}
    rows = cfg.train.batch_size * cfg.grpo.num_generations
    flops = grpo_step_flops(trainer.model_cfg, rows, round(median["prompt_width"]), round(median["decoded"]),
                            cfg.grpo.beta > 0, cfg.grpo.num_iterations, weight_gradients=not cfg.lora.rank)
    peak = run_peak_flops(jax.numpy.dtype(trainer.model_cfg.dtype))
    memory, memory_source = peak_memory_bytes()
    programs = cache_counts()
    result = {
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "cpu": cpu_model(),
        "mesh": dict(trainer.mesh.shape),
        "rollouts_per_step": rows,
        "first_step_s": round(first_step_s, 3),
        "median_step_s": round(median["fused"], 4),
        "median_rollout_s": round(median["rollout"], 4),
        "median_score_s": round(median["score"], 4),
        "median_update_s": round(median["learn"], 4),
        "median_reference_s": round(median["reference"], 4),  # part of the update; 0 without a reference (beta 0)
        "completion_tokens_per_s": round(median["tokens"] / median["fused"], 1),
        "step_gflop": round(flops["total"] / 1e9, 3),
        "achieved_gflops": round(flops["total"] / median["fused"] / 1e9, 2),
        "peak_matmul_gflops": round(peak / 1e9, 2),
        "mfu": round(flops["total"] / median["fused"] / peak, 4),
        "peak_memory_bytes": memory,
        "peak_memory_source": memory_source,
        "params_bytes_per_device": state_bytes["params"],
        "opt_state_bytes_per_device": state_bytes["opt_state"],
        "params_plus_opt_bytes_one_device": state_bytes["params_total"] + state_bytes["opt_state_total"],
        "lora_base_bytes_per_device": state_bytes["base"],  # the frozen (maybe quantized) base; 0 without LoRA
        "loadavg_1m": os.getloadavg()[0],
        # Whether the host's large buffers (XLA's CPU temporaries) get transparent huge pages (rlreason.huge_pages).
        "host_huge_pages": huge_pages_on(),
        # Programs this process compiled and loaded from the persistent cache: a warm rerun compiles none.
        "programs_compiled": programs["compiled"],
        "programs_loaded_from_cache": programs["loaded"],
    }
    print(f"GRPO step on {result['device']} ({result['cpu']}, {os.cpu_count()} cores), mesh {result['mesh']}, "
          f"{rows} rollouts/step (median of {TIMED_STEPS} steps after compile)")
    print(f"  whole step (one program) {result['median_step_s']:.3f} s   first step (compile) {first_step_s:.1f} s")
    print(f"  split: sampling {result['median_rollout_s']:.3f} s   scoring {result['median_score_s']:.3f} s   "
          f"update {result['median_update_s']:.3f} s (of which the reference pass {result['median_reference_s']:.3f} s)")
    print(f"  completion tokens/s {result['completion_tokens_per_s']:.0f}")
    print(f"  {result['step_gflop']:.2f} GFLOP/step (prefill {flops['prefill'] / 1e9:.2f}, decode "
          f"{flops['decode'] / 1e9:.2f}, reference {flops['reference'] / 1e9:.2f}, policy {flops['policy'] / 1e9:.2f})"
          f" = {result['achieved_gflops']:.1f} GFLOP/s; a {trainer.model_cfg.dtype} matmul peaks at "
          f"{result['peak_matmul_gflops']:.1f} GFLOP/s here: MFU {result['mfu']:.3f}")
    print(f"  peak memory {memory / 2**20:,.0f} MiB ({memory_source}); host buffers in "
          f"{'transparent huge pages' if result['host_huge_pages'] else '4 KiB pages (see rlreason.huge_pages)'}")
    print(f"  per-device params {state_bytes['params']:,} B + optimizer {state_bytes['opt_state']:,} B "
          f"(one device would hold {result['params_plus_opt_bytes_one_device']:,} B)"
          + (f"; the LoRA base {state_bytes['base']:,} B" if state_bytes["base"] else ""))
    print(f"  XLA programs: {result['programs_compiled']} compiled, {result['programs_loaded_from_cache']} loaded "
          f"from the compilation cache ({jax.config.jax_compilation_cache_dir or 'none set'})")
    busy = result["loadavg_1m"] > (os.cpu_count() or 1)
    print(f"  1-min load average {result['loadavg_1m']:.2f}"
          + (" (above the core count: other work competed, figures are pessimistic)" if busy else ""))
    print(json.dumps(result))
    return result


def run_memory(cfg: Config) -> dict:
    """Compiles the fused step (one program; train.split_step and dynamic-sampling refill run its phases apart,
    which hold no more at once) for the widest prompt batch (sampling.prompt_bucket off) without running it or
    reading weights, and prints what the compiled program holds per device (XLA's memory analysis): its arguments
    (the state and the batch), its outputs, what the donated state shares between the two, and its temporaries.
    Without train.model_dir and tokenizer.path, a tokenizer is trained on the task corpus as `run_bench` does."""
    with tempfile.TemporaryDirectory() as scratch:
        sampling = dataclasses.replace(cfg.sampling, prompt_bucket=0)
        cfg = dataclasses.replace(cfg, sampling=sampling)
        if not cfg.train.model_dir and not cfg.tokenizer.path:
            tokenizer_file = Path(scratch) / _task_tokenizer(cfg).save_to(scratch)
            cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, path=str(tokenizer_file)))
        trainer = build_trainer(cfg, abstract_state=True)
        batch = trainer.prompt_batch(next(trainer.batches))
        start = time.perf_counter()
        fused_step = jax.jit(trainer.functions.step, donate_argnums=0)
        analysis = fused_step.lower(trainer.state, batch).compile().memory_analysis()
        compile_s = time.perf_counter() - start
    if analysis is None:
        raise RuntimeError(f"the {jax.default_backend()} backend gives no memory analysis of a compiled program")
    result = {
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "mesh": dict(trainer.mesh.shape),
        "rollouts_per_step": cfg.train.batch_size * cfg.grpo.num_generations,
        "prompt_tokens": batch["prompt_tokens"].shape[1],
        "completion_tokens": cfg.sampling.max_completion_length,
        "compile_s": round(compile_s, 1),
        "argument_bytes": analysis.argument_size_in_bytes,
        "output_bytes": analysis.output_size_in_bytes,
        "donated_bytes": analysis.alias_size_in_bytes,
        "temporary_bytes": analysis.temp_size_in_bytes,
        # Arguments and outputs live together except where the donated state's buffers are reused.
        "peak_bytes": (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
                       + analysis.temp_size_in_bytes),
    }
    gib = lambda key: f"{result[key] / 2**30:.2f} GiB"  # noqa: E731
    print(f"GRPO step compiled for {result['device']}, mesh {result['mesh']}, {result['rollouts_per_step']} rollouts "
          f"of {result['prompt_tokens']} prompt + {result['completion_tokens']} completion tokens "
          f"({compile_s:.0f} s to compile; nothing run)")
    print(f"  per device: arguments (state, batch) {gib('argument_bytes')}, outputs {gib('output_bytes')} "
          f"({gib('donated_bytes')} of them in the donated state's buffers), temporaries {gib('temporary_bytes')}")
    print(f"  peak per device {gib('peak_bytes')} (arguments + outputs - donated + temporaries)")
    print(json.dumps(result))
    return result
