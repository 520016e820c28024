"""The small commands around a model directory: `rlreason sample` and `rlreason eval`."""

from __future__ import annotations

import json

import jax
import numpy as np

from rlreason.config import Config
from rlreason.data.encoding import left_pad, load_prompts
from rlreason.models.store import load_model
from rlreason.sampling.sampler import SamplingParams, generate_groups
from rlreason.tokenizers.templates import render_prompt
from rlreason.train.evaluate import evaluate


def sample_texts(params, model_cfg, tokenizer, questions: list[str], cfg: Config, seed: int) -> list[str]:
    """One completion per question, rendered with the configured template and sampled with cfg.sampling."""
    encoded = [tokenizer.encode(render_prompt(question, cfg.tokenizer.template, tokenizer)) for question in questions]
    width = max(len(ids) for ids in encoded)
    prompt_tokens, prompt_mask = map(np.stack, zip(*(left_pad(ids, width, tokenizer.pad_id) for ids in encoded)))
    sampling = SamplingParams.from_config(cfg.sampling)
    roll = jax.jit(generate_groups, static_argnames=("cfg", "sampling", "group_size", "stop_ids", "pad_id"))(
        params, prompt_tokens, prompt_mask, jax.random.key(seed), cfg=model_cfg, sampling=sampling, group_size=1,
        stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id)
    roll = jax.device_get(roll)
    return [tokenizer.decode(tokens[mask > 0]) for tokens, mask in zip(roll.tokens, roll.completion_mask)]


def run_sample(cfg: Config, model_dir: str, questions: list[str]) -> None:
    params, model_cfg, tokenizer = load_model(model_dir, run=cfg.model)
    for question, text in zip(questions, sample_texts(params, model_cfg, tokenizer, questions, cfg, cfg.train.seed)):
        print(f"--- {question}\n{text}")


def run_eval(cfg: Config, model_dir: str, show_progress: bool = True) -> None:
    params, model_cfg, tokenizer = load_model(model_dir, run=cfg.model)
    prompts = load_prompts(cfg.task, "eval", cfg.task.num_eval, tokenizer, cfg.tokenizer.template,
                           cfg.sampling.max_prompt_length)
    summary, _ = evaluate(params, model_cfg, tokenizer, prompts, cfg, seed=cfg.train.seed,
                          show_progress=show_progress)
    print(f"eval: model {model_dir} on {summary['num_problems']} held-out problems of task {cfg.task.name!r}, "
          f"{summary['samples_per_problem']} samples each:")
    print(json.dumps(summary, indent=2))
