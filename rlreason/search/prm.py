"""A process reward model (PRM): the policy's transformer with a scalar head read at each step's last token.

The score of step k is sigmoid(w . final_norm(h) + b), h the hidden state at the step's last token (the model's
own final norm, so the head reads what the LM head reads). It is trained by binary cross-entropy against soft
Monte-Carlo labels (`step_labels`: a label of 0.6 is a target probability, as with Math-Shepherd's soft labels),
averaged over the labelled steps. Arrays cover whole rows, prompt and completion together, [B, L].

`rlreason prm` (rlreason.train.prm) trains one and writes a folder; `load_prm` reads it back, `prm_scorer` scores
partial solutions for step-level search, and `completion_scores` scores whole completions (a completion is as good
as its weakest step, as in Math-Shepherd's and Lightman et al.'s best-of-N) for evaluation (`eval.prm`).
"""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rlreason.config import ConfigError, ModelConfig
from rlreason.models.store import ModelDirError, load_model, load_model_config
from rlreason.models.transformer import Params, forward_hidden, positions_from_mask, rms_norm
from rlreason.parallel.rules import AXIS_RULES, Rules, param_shardings, replicated
from rlreason.search.steps import split_steps
from rlreason.storage import storage_path
from rlreason.tokenizers import Tokenizer

# The files of a `rlreason prm` folder besides its model directory model/.
PRM_HEAD_FILE, PRM_SETTINGS_FILE = "prm_head.npz", "prm.json"


def init_head(cfg: ModelConfig) -> dict:
    """The scalar head {"w": [E], "b": []}, zero: every step scores 0.5 until trained."""
    return {"w": jnp.zeros((cfg.hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def step_logits(params: Params, head: dict, tokens: jax.Array, mask: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The head's logit at every position [B, L] of left-padded rows `tokens`, `mask` [B, L]."""
    mask = mask.astype(bool)
    hidden, _ = forward_hidden(params, tokens, positions_from_mask(mask), mask, cfg)
    normed = rms_norm(hidden, params["final_norm"], cfg).astype(jnp.float32)
    return normed @ head["w"] + head["b"]


def prm_loss(logits: jax.Array, step_end: jax.Array, step_of: jax.Array, soft_labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of the step-end logits [B, L] against `soft_labels` [B, S] of the steps that
    have one (NaN: no label); step_end [B, L] bool and step_of [B, L] (-1 outside every step) as `Steps` gives
    them, laid over the same rows."""
    targets = jnp.take_along_axis(soft_labels, jnp.maximum(step_of, 0), axis=1)
    labelled = step_end & (step_of >= 0) & jnp.isfinite(targets)
    targets = jnp.where(labelled, targets, 0.0)
    cross_entropy = jax.nn.softplus(logits) - targets * logits  # -t log sigmoid(x) - (1 - t) log(1 - sigmoid(x))
    return jnp.sum(jnp.where(labelled, cross_entropy, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)


class ProcessRewardModel(NamedTuple):
    params: Params
    head: dict
    cfg: ModelConfig
    tokenizer: Tokenizer
    delimiter: str  # where its steps end (`rlreason prm`'s prm.delimiter)


def load_prm(directory: str, mesh: Mesh | None = None, rules: Rules = AXIS_RULES) -> ProcessRewardModel:
    """The PRM of a `rlreason prm` folder: on the default device, or laid out on `mesh` by `rules` (the head
    replicated)."""
    folder = storage_path(directory)
    if not (folder / PRM_HEAD_FILE).is_file():
        raise ModelDirError(f"{str(folder)!r} is not a process reward model folder (it has no {PRM_HEAD_FILE}): make "
                            f"one with `rlreason prm CONFIG --model POLICY --out {directory}`")
    shardings = None if mesh is None else param_shardings(load_model_config(folder / "model")[0], mesh, rules)
    params, cfg, tokenizer = load_model(folder / "model", shardings=shardings)
    with (folder / PRM_HEAD_FILE).open("rb") as file:
        stored = np.load(file)
        head = {"w": jnp.asarray(stored["w"]), "b": jnp.asarray(stored["b"])}
    if mesh is not None:
        head = jax.device_put(head, replicated(mesh))
    delimiter = json.loads((folder / PRM_SETTINGS_FILE).read_text())["delimiter"]
    return ProcessRewardModel(params, head, cfg, tokenizer, delimiter)


def prm_scorer(params, head: dict, cfg: ModelConfig):
    """A step-level search scorer (rlreason.search.beam's `Scorer`): the PRM's probability at each left-padded
    row's last token, tokens and mask [R, W] -> [R]."""
    logits_of = jax.jit(lambda tokens, mask: step_logits(params, head, tokens, mask, cfg)[:, -1])
    return lambda tokens, mask: np.asarray(jax.nn.sigmoid(logits_of(jnp.asarray(tokens), jnp.asarray(mask))))


def step_scores(params, head: dict, cfg: ModelConfig, is_delimiter: jax.Array, prompt_tokens: jax.Array,
                prompt_mask: jax.Array, tokens: jax.Array, completion_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(the PRM's probability at every completion position [B, Tc], where steps end [B, Tc] bool), in one forward
    pass over prompt + completion. prompt_tokens, prompt_mask [B, Tp] left-padded; tokens, completion_mask
    [B, Tc]; is_delimiter [V] bool. Jit-able."""
    steps = split_steps(tokens, completion_mask, is_delimiter)
    rows = jnp.concatenate([prompt_tokens, tokens], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(bool), completion_mask.astype(bool)], axis=1)
    return jax.nn.sigmoid(step_logits(params, head, rows, mask, cfg)[:, prompt_tokens.shape[1]:]), steps.ends


def completion_scores(params, head: dict, cfg: ModelConfig, is_delimiter: jax.Array, prompt_tokens: jax.Array,
                      prompt_mask: jax.Array, tokens: jax.Array, completion_mask: jax.Array) -> jax.Array:
    """Each completion's PRM score [B]: the smallest of its steps' probabilities (0 for an empty completion).
    Arguments as `step_scores`."""
    probabilities, ends = step_scores(params, head, cfg, is_delimiter, prompt_tokens, prompt_mask, tokens,
                                      completion_mask)
    return jnp.where(jnp.any(ends, axis=1), jnp.min(jnp.where(ends, probabilities, jnp.inf), axis=1), 0.0)


def check_same_tokenizer(prm: ProcessRewardModel, tokenizer: Tokenizer, key: str, directory: str) -> None:
    """Raises ConfigError (naming config key `key`) when the PRM of `directory` reads other token ids than
    `tokenizer` makes."""
    if prm.tokenizer.vocab_size != tokenizer.vocab_size or any(
            prm.tokenizer.decode([token]) != tokenizer.decode([token]) for token in range(tokenizer.vocab_size)):
        raise ConfigError(f"config key '{key}' names {directory!r}, a PRM whose tokenizer is not the policy's: a "
                          f"PRM reads the policy's token ids, so train it from this policy (rlreason prm --model)")
