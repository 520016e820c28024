"""The small commands around a model: `rlreason sample` (a model directory) and `rlreason eval` (a model
directory or a checkpoint of `rlreason train`)."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rlreason.config import Config, ModelConfig, from_dict
from rlreason.data.encoding import left_pad
from rlreason.models.lora import adapter_specs, merge_adapters, quantize_base, with_adapters
from rlreason.models.store import load_model, load_model_config, run_model_config
from rlreason.models.transformer import ParamSpec, param_specs
from rlreason.parallel.distributed import initialize, is_main_process
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import axis_rules, param_shardings, spec_shardings
from rlreason.sampling.sampler import SamplingParams, generate_groups
from rlreason.sampling.tools import make_tool_turns
from rlreason.storage import storage_path
from rlreason.tokenizers.templates import render_prompt
from rlreason.train.evaluate import EVAL_DIR, build_evaluator, eval_metrics, write_results
from rlreason.train.loop import load_policy_config


def sample_texts(params, model_cfg, tokenizer, questions: list[str], cfg: Config, seed: int) -> list[str]:
    """One completion per question, rendered with the configured template and sampled with cfg.sampling (its
    tools included)."""
    encoded = [tokenizer.encode(render_prompt(question, cfg.tokenizer.template, tokenizer)) for question in questions]
    width = max(len(ids) for ids in encoded)
    prompt_tokens, prompt_mask = map(np.stack, zip(*(left_pad(ids, width, tokenizer.pad_id) for ids in encoded)))
    sampling = SamplingParams.from_config(cfg.sampling)
    roll = jax.jit(generate_groups, static_argnames=("cfg", "sampling", "group_size", "stop_ids", "pad_id", "tools"))(
        params, prompt_tokens, prompt_mask, jax.random.key(seed), cfg=model_cfg, sampling=sampling, group_size=1,
        stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id, tools=make_tool_turns(cfg.sampling.tools, tokenizer))
    roll = jax.device_get(roll)
    return [tokenizer.decode(tokens[mask > 0]) for tokens, mask in zip(roll.tokens, roll.completion_mask)]


def run_sample(cfg: Config, model_dir: str, questions: list[str]) -> None:
    params, model_cfg, tokenizer = load_model(model_dir, run=cfg.model)
    for question, text in zip(questions, sample_texts(params, model_cfg, tokenizer, questions, cfg, cfg.train.seed)):
        print(f"--- {question}\n{text}")


def load_checkpoint_params(checkpoint: epath.Path, model_cfg: ModelConfig, shardings, specs=None):
    """The trained params of a `rlreason train` checkpoint (<checkpoint.dir>/<step>), read onto `shardings`
    (the rest of its state is not read). `specs`: their ParamSpec tree (a LoRA run's adapters); None: the
    model's."""
    abstract = jax.tree.map(lambda spec, sharding: jax.ShapeDtypeStruct(spec.shape, model_cfg.param_dtype,
                                                                        sharding=sharding),
                            param_specs(model_cfg) if specs is None else specs, shardings,
                            is_leaf=lambda node: isinstance(node, ParamSpec))
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(checkpoint / "state", args=ocp.args.PyTreeRestore(
            item={"params": abstract}, restore_args={"params": restore_args}, partial_restore=True))
    return restored["params"]


def lora_checkpoint_policy(checkpoint: epath.Path, saved: Config, model_cfg: ModelConfig, mesh, rules):
    """The merged policy of a LoRA run's checkpoint: its adapters on the base of the run's train.model_dir
    (quantized as the run quantized it), as plain params in the parameter dtype."""
    lora, shardings = saved.lora, param_shardings(model_cfg, mesh, rules)
    specs = adapter_specs(model_cfg, lora)
    adapters = load_checkpoint_params(checkpoint, model_cfg, spec_shardings(specs, mesh, rules), specs)
    base = quantize_base(load_model(saved.train.model_dir, shardings=shardings, run=saved.model)[0], lora)
    merge = functools.partial(merge_adapters, dtype=jnp.dtype(model_cfg.param_dtype))
    return jax.jit(merge, out_shardings=shardings)(with_adapters(base, adapters, lora))


def evaluated_model(cfg: Config, model: str, mesh, rules):
    """(params placed on the mesh, ModelConfig, Tokenizer, step) of a model directory (step 0) or of a
    checkpoint of `rlreason train` (its step; the model and tokenizer of the run's train.model_dir; a LoRA run's
    adapters merged into that model)."""
    path = storage_path(model)
    if (path / "state").is_dir() and (path / "config").is_dir():
        saved = from_dict(json.loads((path / "config" / "metadata").read_text()))
        model_cfg, tokenizer, _ = load_policy_config(saved)
        if saved.lora.rank:
            return lora_checkpoint_policy(path, saved, model_cfg, mesh, rules), model_cfg, tokenizer, int(path.name)
        shardings = param_shardings(model_cfg, mesh, rules)
        return load_checkpoint_params(path, model_cfg, shardings), model_cfg, tokenizer, int(path.name)
    stored, _ = load_model_config(path)
    shardings = param_shardings(run_model_config(stored, cfg.model, path), mesh, rules)
    params, model_cfg, tokenizer = load_model(path, shardings=shardings, run=cfg.model)
    return params, model_cfg, tokenizer, 0


def model_eval_metrics(cfg: Config, model: str, mesh, rules) -> dict[str, float]:
    """eval.sets' summaries of a model directory or checkpoint, as eval/<set>/<metric> keys."""
    params, model_cfg, tokenizer, _ = evaluated_model(cfg, model, mesh, rules)
    return eval_metrics(build_evaluator(cfg, model_cfg, tokenizer, mesh, rules).evaluate_all(params))


def run_eval(cfg: Config, model: str, out_dir: str | None = None, show_progress: bool = True) -> dict:
    """Evaluates a model directory or a checkpoint on eval.sets over the config's mesh (every process of the
    run takes part); prints the summaries and, with `out_dir`, writes them and the samples there
    (rlreason.train.evaluate's layout, at step 0 for a model directory). Returns {set: EvalResult}."""
    initialize(cfg.distributed)
    mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
    params, model_cfg, tokenizer, step = evaluated_model(cfg, model, mesh, rules)
    evaluator = build_evaluator(cfg, model_cfg, tokenizer, mesh, rules)
    results = evaluator.evaluate_all(params, show_progress=show_progress and is_main_process())
    if is_main_process():
        for name, result in results.items():
            print(f"eval: model {model}, set {name!r}: {result.summary['num_problems']} problems, "
                  f"{result.summary['samples_per_problem']} samples each:")
            print(json.dumps(result.summary, indent=2))
        if out_dir is not None:
            write_results(storage_path(out_dir), step, results)
            print(f"eval: summaries and samples written to {storage_path(out_dir) / EVAL_DIR}")
    return results
