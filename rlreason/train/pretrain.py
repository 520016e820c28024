"""Next-token pretraining of a tiny base model on a synthetic task's worked solutions.

The corpus mixes two styles of the same worked solution: a share `pretrain.r1_format_fraction` in the R1
format (`<think>…</think> <answer>…</answer>`) and the rest in plain prose. Trained briefly, the model
answers in the R1 format sometimes but not usually, and is often wrong: a base model for R1-Zero-style RL.
With `pretrain.carry_slip_rate` (addition only), the worked solutions forget each carry with that probability,
answers following the slips: the base model then writes the format but often adds wrongly, a habit that only a
reward for right answers can break (a random reward or a format reward cannot).
The loss covers completion tokens only; prompts are the same rendered template the RL step samples from.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlreason.config import Config, ConfigError
from rlreason.data import synthetic
from rlreason.models.store import save_model
from rlreason.models.transformer import forward, init_params
from rlreason.progress import progress_bar
from rlreason.rl.step import init_train_state
from rlreason.tokenizers import Tokenizer, load_tokenizer, train_sentencepiece
from rlreason.tokenizers.templates import render_prompt
from rlreason.train.optim import make_optimizer


def corpus_texts(cfg: Config, problems: list[synthetic.Problem]) -> list[tuple[str, str]]:
    """(prompt, completion) pairs; the completion style is drawn per problem from a seeded stream."""
    style_rng = random.Random(cfg.train.seed)
    pairs = []
    for problem in problems:
        r1 = style_rng.random() < cfg.pretrain.r1_format_fraction
        if cfg.pretrain.carry_slip_rate:
            problem = synthetic.with_forgotten_carries(problem, style_rng, cfg.pretrain.carry_slip_rate)
        completion = synthetic.r1_completion(problem) if r1 else synthetic.plain_completion(problem)
        pairs.append((render_prompt(problem.question, cfg.tokenizer.template), completion))
    return pairs


def tokenizer_for(cfg: Config, pairs: list[tuple[str, str]]) -> Tokenizer:
    """The configured tokenizer file, or a sentencepiece model trained on the corpus when none is given."""
    if cfg.tokenizer.path:
        return load_tokenizer(cfg.tokenizer.path)
    lines = [prompt + completion for prompt, completion in pairs[: cfg.tokenizer.train_corpus_size]]
    return train_sentencepiece(lines, cfg.tokenizer.vocab_size, cfg.tokenizer.byte_fallback)


def encode_corpus(pairs: list[tuple[str, str]], tokenizer: Tokenizer, seq_len: int):
    """Right-padded token rows [N, seq_len] int32 and a loss mask [N, seq_len] over completion + EOS tokens."""
    tokens = np.full((len(pairs), seq_len), tokenizer.pad_id, np.int32)
    loss_mask = np.zeros((len(pairs), seq_len), np.float32)
    for row, (prompt, completion) in enumerate(pairs):
        prompt_ids = tokenizer.encode(prompt)
        completion_ids = tokenizer.encode(completion) + [tokenizer.eos_id]
        length = len(prompt_ids) + len(completion_ids)
        if length > seq_len:
            raise ConfigError(f"config key 'pretrain.seq_len' ({seq_len}) is shorter than corpus row {row}, which has "
                              f"{length} tokens; raise pretrain.seq_len or shorten the task (task.max_digits)")
        tokens[row, :length] = prompt_ids + completion_ids
        loss_mask[row, len(prompt_ids):length] = 1.0
    return tokens, loss_mask


def next_token_loss(params, tokens: jax.Array, loss_mask: jax.Array, model_cfg) -> jax.Array:
    """Mean cross-entropy of tokens[:, 1:] where loss_mask[:, 1:] is set. tokens, loss_mask: [B, T]."""
    inputs = tokens[:, :-1]
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
    logits, _ = forward(params, inputs, positions, jnp.ones(inputs.shape, bool), model_cfg)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    mask = loss_mask[:, 1:]
    return -jnp.sum(target_log_probs * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def pretrain(cfg: Config, out_dir: str | Path, show_progress: bool = True) -> Path:
    """Trains a base model from scratch and writes a model directory to `out_dir`; returns its path."""
    settings = cfg.pretrain
    if settings.carry_slip_rate and cfg.task.name != "addition":
        raise ConfigError(f"pretrain.carry_slip_rate={settings.carry_slip_rate} forgets carries of worked additions, "
                         f"but task.name={cfg.task.name!r}; set pretrain.carry_slip_rate=0 or task.name=addition")
    problems = synthetic.generate(cfg.task, settings.steps * settings.batch_size, cfg.task.seed)
    pairs = corpus_texts(cfg, problems)
    tokenizer = tokenizer_for(cfg, pairs)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"config key 'model.vocab_size' ({cfg.model.vocab_size}) is smaller than the tokenizer's "
                          f"{tokenizer.vocab_size} tokens; raise model.vocab_size to at least {tokenizer.vocab_size}, "
                          f"or lower tokenizer.vocab_size")
    tokens, loss_mask = encode_corpus(pairs, tokenizer, settings.seq_len)

    optimizer, schedule = make_optimizer(settings.optim, settings.steps)
    params = init_params(cfg.model, jax.random.key(cfg.train.seed))
    state = init_train_state(params, optimizer, jax.random.key(cfg.train.seed), keep_reference=False)

    @jax.jit
    def train_step(state, batch_tokens, batch_mask):
        loss, grads = jax.value_and_grad(next_token_loss)(state.params, batch_tokens, batch_mask, cfg.model)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                             step=state.step + 1), loss

    bar = progress_bar(range(settings.steps), desc="pretrain", show=show_progress)
    start = time.perf_counter()
    for index in bar:
        rows = slice(index * settings.batch_size, (index + 1) * settings.batch_size)
        state, loss = train_step(state, tokens[rows], loss_mask[rows])
        if index % 10 == 0 or index == settings.steps - 1:
            bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{float(schedule(index)):.1e}")
    bar.close()
    out_dir = Path(out_dir)
    save_model(out_dir, jax.device_get(state.params), cfg.model, tokenizer)
    print(f"pretrain: {settings.steps} steps in {time.perf_counter() - start:.0f} s, final loss {float(loss):.3f}; "
          f"model written to {out_dir}")
    return out_dir
