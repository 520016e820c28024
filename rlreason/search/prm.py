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

from rlreason.config import ModelConfig
from rlreason.models.store import load_model
from rlreason.models.transformer import Params, forward_hidden, positions_from_mask, rms_norm
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


def load_prm(directory: str, shardings=None) -> ProcessRewardModel:
    """The PRM of a `rlreason prm` folder; `shardings` places the transformer's params (None: default device)."""
    folder = storage_path(directory)
    params, cfg, tokenizer = load_model(folder / "model", shardings=shardings)
    with (folder / PRM_HEAD_FILE).open("rb") as file:
        stored = np.load(file)
        head = {"w": jnp.asarray(stored["w"]), "b": jnp.asarray(stored["b"])}
    delimiter = json.loads((folder / PRM_SETTINGS_FILE).read_text())["delimiter"]
    return ProcessRewardModel(params, head, cfg, tokenizer, delimiter)


def prm_scorer(params, head: dict, cfg: ModelConfig):
    """A step-level search scorer (rlreason.search.beam's `Scorer`): the PRM's probability at each left-padded
    row's last token, tokens and mask [R, W] -> [R]."""
    logits_of = jax.jit(lambda tokens, mask: step_logits(params, head, tokens, mask, cfg)[:, -1])
    return lambda tokens, mask: np.asarray(jax.nn.sigmoid(logits_of(jnp.asarray(tokens), jnp.asarray(mask))))


def completion_scores(params, head: dict, cfg: ModelConfig, is_delimiter: jax.Array, prompt_tokens: jax.Array,
                      prompt_mask: jax.Array, tokens: jax.Array, completion_mask: jax.Array) -> jax.Array:
    """Each completion's PRM score [B]: the smallest of its steps' probabilities (0 for an empty completion).

    prompt_tokens, prompt_mask [B, Tp] left-padded; tokens, completion_mask [B, Tc]; is_delimiter [V] bool.
    Jit-able."""
    steps = split_steps(tokens, completion_mask, is_delimiter)
    rows = jnp.concatenate([prompt_tokens, tokens], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(bool), completion_mask.astype(bool)], axis=1)
    probabilities = jax.nn.sigmoid(step_logits(params, head, rows, mask, cfg)[:, prompt_tokens.shape[1]:])
    weakest = jnp.min(jnp.where(steps.ends, probabilities, jnp.inf), axis=1)
    return jnp.where(steps.count > 0, weakest, 0.0)
