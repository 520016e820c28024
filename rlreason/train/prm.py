"""`rlreason prm`: train a process reward model on Math-Shepherd labels of a policy's own samples.

1. Sample `prm.num_samples` completions of each of `prm.num_prompts` training prompts with the policy (`--model`:
   a model directory or a `rlreason train` checkpoint), temperature `prm.temperature`.
2. Split them into steps at `prm.delimiter` and label each step by `prm.num_rollouts` continuations of its prefix
   that `grpo.accuracy_reward` verifies (rlreason.search.step_labels), a chunk of completions at a time.
3. Train the policy's transformer with a scalar head (rlreason.search.prm) on the soft labels: `prm.steps`
   updates by `prm.optim` (rlreason.train.optim) of `prm.batch_size` completions, from the policy's weights and
   a zero head. The completions of the last `prm.heldout_fraction` of the prompts are held out.

Writes to OUT:
  model/          the PRM's transformer, a model directory (rlreason sample, eval, convert read it)
  prm_head.npz    the scalar head: w [hidden_size], b []
  prm.json        how it reads completions: {"delimiter": prm.delimiter}
  labels.jsonl    a row per sampled completion: problem, sample, heldout, question, answer (gold), completion,
                  steps (texts), soft and hard labels of its labelled steps
  summary.json    counts, the mean soft label, and the held-out loss and step accuracy before and after training
rlreason.search.prm reads the PRM back (`load_prm`) and scores with it: step-level search (`prm_scorer`) and
evaluation samples (`eval.prm`, `completion_scores`). The command runs on one process, its rows split over the
config's mesh (every local device by default).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from rlreason.config import Config, ModelConfig
from rlreason.data.encoding import load_prompts
from rlreason.models.store import save_model
from rlreason.models.transformer import laid_out
from rlreason.parallel.distributed import initialize
from rlreason.parallel.mesh import make_mesh
from rlreason.parallel.rules import Rules, axis_rules, model_layout, put_rows
from rlreason.progress import progress_bar
from rlreason.sampling.sampler import SamplingParams
from rlreason.search.continuation import sample_rows
from rlreason.search.prm import PRM_HEAD_FILE, PRM_SETTINGS_FILE, init_head, prm_loss, step_logits
from rlreason.search.step_labels import monte_carlo_step_labels
from rlreason.search.steps import delimiter_table
from rlreason.storage import storage_path
from rlreason.tokenizers import Tokenizer
from rlreason.train.commands import evaluated_model
from rlreason.train.jsonl import write_rows
from rlreason.train.optim import make_optimizer
from rlreason.verifiers.base import get_reward_fn
from rlreason.verifiers.bridge import detokenize

LABEL_CHUNK = 16  # completions whose step prefixes are continued in one batch of the sampler


class PRMRows(NamedTuple):
    """Labelled completions laid out for the PRM: tokens, mask [B, L] (the left-padded prompt, then the
    completion), step_end [B, L] bool, step_of [B, L] (-1 outside the completion's steps), soft [B, S] (NaN where
    a step has no label), hard [B, S] bool."""

    tokens: np.ndarray
    mask: np.ndarray
    step_end: np.ndarray
    step_of: np.ndarray
    soft: np.ndarray
    hard: np.ndarray

    def take(self, rows: np.ndarray) -> "PRMRows":
        return PRMRows(*(field[rows] for field in self))


class PRMPrograms(NamedTuple):
    """The PRM's programs, compiled for the command's mesh: rows split over its batch axes, each device running
    its own rows through the model (rlreason.parallel.rules.model_layout)."""

    logits: Callable  # (trained {"model", "head"}, PRMRows on the mesh) -> step logits [B, L]
    init: Callable  # trained -> the optimizer's state
    update: Callable  # (trained, optimizer state, PRMRows on the mesh) -> (trained, optimizer state, loss)
    place: Callable  # PRMRows (numpy) -> the same rows on the mesh


def prm_programs(model_cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                 rules: Rules) -> PRMPrograms:
    arrays = model_layout(mesh, rules)

    def logits(trained, batch: PRMRows) -> jax.Array:
        return step_logits(trained["model"], trained["head"], batch.tokens, batch.mask, model_cfg)

    def update(trained, opt_state, batch: PRMRows):
        loss, grads = jax.value_and_grad(
            lambda trained: prm_loss(logits(trained, batch), batch.step_end, batch.step_of, batch.soft))(trained)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state, loss

    return PRMPrograms(jax.jit(laid_out(logits, arrays)), optimizer.init, jax.jit(laid_out(update, arrays)),
                       functools.partial(put_rows, mesh=mesh, rules=rules))


def prm_evaluation(programs: PRMPrograms, trained, rows: PRMRows) -> dict[str, float]:
    """The PRM's loss on `rows` and its step accuracy: how often sigmoid(logit) > 0.5 at a labelled step's end
    agrees with the step's hard label (some continuation verified)."""
    logits = np.asarray(programs.logits(trained, programs.place(rows)))
    loss = float(prm_loss(jnp.asarray(logits), jnp.asarray(rows.step_end), jnp.asarray(rows.step_of),
                          jnp.asarray(rows.soft)))
    labelled = rows.step_end & (rows.step_of >= 0)
    batch, position = np.nonzero(labelled)
    step = rows.step_of[batch, position]
    known = np.isfinite(rows.soft[batch, step])
    agree = (logits[batch, position] > 0)[known] == rows.hard[batch, step][known]
    return {"loss": loss, "step_accuracy": float(np.mean(agree)) if agree.size else math.nan,
            "labelled_steps": int(known.sum())}


def sample_and_label(cfg: Config, params, model_cfg: ModelConfig, tokenizer: Tokenizer, mesh: Mesh, rules: Rules,
                     show_progress: bool):
    """(the PRMRows of every sampled completion, their labels.jsonl rows without `heldout`), sampled with the
    rows split over `mesh` by `rules` (params on it)."""
    settings = cfg.prm
    prompts = load_prompts(cfg.task, "train", settings.num_prompts, tokenizer, cfg.tokenizer.template,
                           cfg.sampling.max_prompt_length)
    sampling = SamplingParams.from_config(cfg.sampling, temperature=settings.temperature)
    rng = jax.random.key(cfg.train.seed)
    roll = jax.device_get(sample_rows(params, model_cfg, prompts.prompt_tokens, prompts.prompt_mask,
                                      jax.random.split(jax.random.fold_in(rng, 0), len(prompts)), sampling,
                                      settings.num_samples, tokenizer.stop_ids, tokenizer.pad_id, mesh, rules))
    reward = get_reward_fn(cfg.grpo.accuracy_reward)
    questions = [detokenize(tokenizer, tokens, mask) for tokens, mask in zip(prompts.prompt_tokens,
                                                                              prompts.prompt_mask)]
    table = delimiter_table(tokenizer, settings.delimiter)
    rows, records = [], []
    chunks = range(0, len(roll.tokens), LABEL_CHUNK)
    for chunk in progress_bar(chunks, desc="prm labels", show=show_progress):
        part = slice(chunk, chunk + LABEL_CHUNK)
        problems = np.arange(len(roll.tokens))[part] // settings.num_samples

        def verify(b: int, text: str) -> bool:
            example = prompts.examples[problems[b]]
            return reward(questions[problems[b]], text, example.answer, example.metadata) == 1.0

        steps, labels = monte_carlo_step_labels(
            params, model_cfg, tokenizer, roll.prompt_tokens[part], roll.prompt_mask[part], roll.tokens[part],
            roll.completion_mask[part], table, verify, settings.max_steps, settings.num_rollouts, sampling,
            jax.random.fold_in(rng, 1 + chunk // LABEL_CHUNK), mesh, rules)
        step_of, step_end = np.asarray(steps.step_of), np.asarray(steps.ends)
        prompt_width = roll.prompt_tokens.shape[1]
        rows.append(PRMRows(
            tokens=np.concatenate([roll.prompt_tokens[part], roll.tokens[part]], axis=1),
            mask=np.concatenate([roll.prompt_mask[part], roll.completion_mask[part]], axis=1).astype(bool),
            step_end=np.pad(step_end, ((0, 0), (prompt_width, 0))),
            step_of=np.pad(step_of, ((0, 0), (prompt_width, 0)), constant_values=-1),
            soft=np.asarray(labels.soft), hard=np.asarray(labels.hard)))
        for b, problem in enumerate(problems):
            row = chunk + b
            labelled = int(np.sum(np.asarray(labels.valid[b])))
            records.append({
                "problem": int(problem), "sample": int(row % settings.num_samples),
                "question": prompts.examples[problem].question, "answer": prompts.examples[problem].answer,
                "completion": detokenize(tokenizer, roll.tokens[row], roll.completion_mask[row]),
                "steps": [detokenize(tokenizer, roll.tokens[row], step_of[b] == k) for k in range(labelled)],
                "soft": [float(value) for value in np.asarray(labels.soft[b])[:labelled]],
                "hard": [bool(value) for value in np.asarray(labels.hard[b])[:labelled]]})
    return PRMRows(*(np.concatenate(field) for field in zip(*rows))), records


def train_prm(programs: PRMPrograms, params, rows: PRMRows, cfg: Config, model_cfg: ModelConfig, show_progress: bool):
    """(the trained transformer, head, the last update's loss): `prm.steps` updates (`programs.update`, by
    prm.optim) on minibatches of `prm.batch_size` rows, each epoch in a fresh order drawn from train.seed."""
    settings = cfg.prm
    trained = {"model": params, "head": init_head(model_cfg)}
    opt_state = programs.init(trained)
    order = np.random.default_rng(cfg.train.seed)
    size = min(settings.batch_size, len(rows.tokens))
    batches = len(rows.tokens) // size
    loss = math.nan
    for step in progress_bar(range(settings.steps), desc="prm", show=show_progress):
        if step % batches == 0:
            permutation = order.permutation(len(rows.tokens))
        picked = permutation[(step % batches) * size:(step % batches + 1) * size]
        trained, opt_state, loss = programs.update(trained, opt_state, programs.place(rows.take(picked)))
    return trained["model"], trained["head"], float(loss)


def prm(cfg: Config, model: str, out_dir: str, show_progress: bool = True) -> dict:
    """Runs the command (module docstring); returns the summary it writes."""
    initialize(cfg.distributed)
    mesh, rules = make_mesh(cfg.mesh), axis_rules(cfg.mesh)
    params, model_cfg, tokenizer, _ = evaluated_model(cfg, model, mesh, rules)
    programs = prm_programs(model_cfg, make_optimizer(cfg.prm.optim, cfg.prm.steps)[0], mesh, rules)
    rows, records = sample_and_label(cfg, params, model_cfg, tokenizer, mesh, rules, show_progress)
    problems = np.asarray([record["problem"] for record in records])
    heldout = problems > problems.max() - max(1, math.ceil(cfg.prm.heldout_fraction * (problems.max() + 1)))
    train_rows, heldout_rows = rows.take(np.flatnonzero(~heldout)), rows.take(np.flatnonzero(heldout))
    before = prm_evaluation(programs, {"model": params, "head": init_head(model_cfg)}, heldout_rows)
    trained, head, last_loss = train_prm(programs, params, train_rows, cfg, model_cfg, show_progress)
    after = prm_evaluation(programs, {"model": trained, "head": head}, heldout_rows)
    labelled = np.isfinite(rows.soft)
    summary = {"completions": len(records), "train_completions": int((~heldout).sum()),
               "heldout_completions": int(heldout.sum()), "labelled_steps": int(labelled.sum()),
               "mean_soft_label": float(np.mean(rows.soft[labelled])) if labelled.any() else math.nan,
               "train_loss_last": last_loss, "heldout_before": before, "heldout_after": after}
    out = storage_path(out_dir)
    save_model(out / "model", trained, model_cfg, tokenizer)
    with (out / PRM_HEAD_FILE).open("wb") as file:
        np.savez(file, w=np.asarray(head["w"]), b=np.asarray(head["b"]))
    (out / PRM_SETTINGS_FILE).write_text(json.dumps({"delimiter": cfg.prm.delimiter}))
    write_rows(out / "labels.jsonl", [dict(record, heldout=bool(flag)) for record, flag in zip(records, heldout)])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary

