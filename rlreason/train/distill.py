"""`rlreason distill`: on-policy distillation (GKD, Agarwal et al. 2024, with the student's own samples and the
reverse KL), one compiled step: the student samples, the teacher scores the student's tokens, the student
moves toward the teacher where it actually goes.

Step, for a batch of P task prompts (train.batch_size), G = distill.num_generations:
  1. the student (state.params) samples G completions of each prompt with sampling.* (prefill + KV cache);
  2. both models' logits at every completion position, the teacher's held fixed;
  3. loss = the mean over completion tokens (completion_mask) of KL(p_student || p_teacher) =
     sum_v p_s(v) (log p_s(v) - log p_t(v)), both at temperature 1, differentiated through p_s;
  4. one AdamW update (distill.optim), skipped when not finite.
Teacher and student may differ in architecture but must share the tokenizer (checked). The run around the step
(checkpoints, resume, evaluations, metrics, model/) is rlreason.train.update_loop's. Metrics: loss (the
reverse KL per token), completion_tokens, completion_length, teacher_logprob (mean log p_t of the student's
tokens), grad_norm, learning_rate, nonfinite_updates. With model.logprob_chunk_size > 0 the two models' logits
are computed that many completion positions at a time (rlreason.models.logprobs.per_position), so that neither
model's [rows, completion_length, vocab] logits exist at once; 0 computes them whole.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from rlreason.config import Config, ConfigError, ModelConfig
from rlreason.data.encoding import load_prompts
from rlreason.data.pipeline import prompt_batches
from rlreason.models.logprobs import completion_hidden, logprobs_of, per_position
from rlreason.models.store import run_settings_only
from rlreason.models.transformer import Layout, laid_out, unembed
from rlreason.parallel.distributed import initialize
from rlreason.parallel.host_data import process_rows
from rlreason.parallel.rules import model_layout
from rlreason.rl.step import TrainState
from rlreason.sampling.sampler import SamplingParams, generate_groups
from rlreason.tokenizers import Tokenizer
from rlreason.train.commands import evaluated_model
from rlreason.train.loop import run_frame
from rlreason.train.optim import make_optimizer
from rlreason.train.update_loop import (UpdateRun, apply_update, checked_policy, run_updates, start_state,
                                        state_layout)


def token_reverse_kl(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """KL(softmax(student) || softmax(teacher)) over the last axis: logits [..., V] float32 -> [...]."""
    student = jax.nn.log_softmax(student_logits, axis=-1)
    teacher = jax.nn.log_softmax(teacher_logits, axis=-1)
    return jnp.sum(jnp.exp(student) * (student - teacher), axis=-1)


def rollout_hidden(params, roll, cfg: ModelConfig) -> jax.Array:
    """The hidden states [B, Tc, E] that predict each completion token of a rollout."""
    return completion_hidden(params, roll.prompt_tokens, roll.prompt_mask, roll.tokens, cfg)


def make_distill_step(student_cfg: ModelConfig, teacher_cfg: ModelConfig, cfg: Config, tokenizer: Tokenizer,
                      optimizer: optax.GradientTransformation, learning_rate_fn, state_sharding=None,
                      arrays: Layout = Layout()):
    """The compiled step: (state, teacher params, prompt batch) -> (state, metrics) (the module docstring).
    `arrays`: how the forward passes lay out their activations (rlreason.parallel.rules.model_layout)."""
    sampling = SamplingParams.from_config(cfg.sampling)

    def step(state: TrainState, teacher_params, batch: dict):
        rng, sample_rng = jax.random.split(state.rng)
        roll = jax.lax.stop_gradient(generate_groups(
            state.params, batch["prompt_tokens"], batch["prompt_mask"], sample_rng, student_cfg, sampling,
            cfg.distill.num_generations, tokenizer.stop_ids, tokenizer.pad_id))
        mask = roll.completion_mask.astype(jnp.float32)
        count = jnp.sum(mask)
        teacher_hidden = jax.lax.stop_gradient(rollout_hidden(teacher_params, roll, teacher_cfg))

        def mean_kl(params):
            def per_token(student_hidden, teacher_hidden, tokens):
                """(KL(student || teacher), log p_teacher(token)) at each position."""
                teacher_logits = unembed(teacher_params, teacher_hidden, teacher_cfg)
                teacher_logprob = logprobs_of(teacher_logits, tokens, temperature=1.0)
                return token_reverse_kl(unembed(params, student_hidden, student_cfg), teacher_logits), teacher_logprob

            kl, teacher_logprobs = per_position(per_token, student_cfg.logprob_chunk_size,
                                                rollout_hidden(params, roll, student_cfg), teacher_hidden,
                                                roll.tokens)
            return jnp.sum(kl * mask) / jnp.maximum(count, 1.0), jax.lax.stop_gradient(teacher_logprobs)

        (loss, teacher_logprobs), grads = jax.value_and_grad(mean_kl, has_aux=True)(state.params)
        new_state, grad_norm, skipped = apply_update(state, grads, loss, optimizer)
        metrics = {"loss": loss, "completion_tokens": count, "completion_length": jnp.mean(jnp.sum(mask, axis=1)),
                   "teacher_logprob": jnp.sum(teacher_logprobs * mask) / jnp.maximum(count, 1.0),
                   "grad_norm": grad_norm, "learning_rate": learning_rate_fn(state.step),
                   "nonfinite_updates": skipped}
        return new_state.replace(rng=rng), metrics

    return jax.jit(laid_out(step, arrays), donate_argnums=0, out_shardings=(state_sharding, None))


def check_same_tokenizer(student: Tokenizer, teacher: Tokenizer, teacher_path: str) -> None:
    """The teacher must score the student's token ids as the same text."""
    probe = "What is 12+30? <think>12+30=42</think> <answer>42</answer>"
    facts = lambda tokenizer: (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.eos_id,  # noqa: E731
                               tuple(tokenizer.stop_ids), tokenizer.encode(probe))
    if facts(student) != facts(teacher):
        raise ConfigError(f"config key 'distill.teacher': the model in {teacher_path!r} has another tokenizer than "
                          f"the student (train.model_dir); distillation compares the two models token by token, so "
                          f"give the student the teacher's tokenizer (rlreason pretrain ... tokenizer.path=<the "
                          f"teacher's tokenizer file>)")


def distill(cfg: Config, show_progress: bool = True):
    """Distills distill.teacher into train.model_dir for train.steps steps, resuming from the run's checkpoints;
    returns (final TrainState, every step's metrics)."""
    if not cfg.distill.teacher:
        raise ConfigError("config key 'distill.teacher' is empty: name the teacher's model directory (or a "
                          "checkpoint of rlreason train)")
    initialize(cfg.distributed)
    with run_frame(cfg) as (stop_signals, checkpoints):
        mesh, rules, model_cfg, tokenizer = checked_policy(cfg)
        teacher_run = dataclasses.replace(cfg, model=run_settings_only(cfg.model))  # the teacher's own architecture
        teacher_params, teacher_cfg, teacher_tokenizer, _ = evaluated_model(teacher_run, cfg.distill.teacher, mesh,
                                                                            rules)
        check_same_tokenizer(tokenizer, teacher_tokenizer, cfg.distill.teacher)
        prompts = load_prompts(cfg.task, "train", cfg.task.num_train, tokenizer, cfg.tokenizer.template,
                               cfg.sampling.max_prompt_length)
        batch_size = cfg.train.batch_size
        batches = prompt_batches(prompts, batch_size, cfg.train.seed, process_rows(mesh, batch_size, rules))
        optimizer, schedule = make_optimizer(cfg.distill.optim, cfg.train.steps)
        layout = state_layout(model_cfg, optimizer, mesh, rules)
        state, start = start_state(cfg, model_cfg, optimizer, layout, checkpoints, batches)
        step = make_distill_step(model_cfg, teacher_cfg, cfg, tokenizer, optimizer, schedule, layout,
                                 model_layout(mesh, rules))
        run = UpdateRun(cfg, model_cfg, tokenizer, mesh, rules, batches,
                        lambda state, batch: step(state, teacher_params, batch), "completion_tokens", "distill",
                        prompts.skipped_rows)
        return run_updates(run, state, start, checkpoints, stop_signals, show_progress)
