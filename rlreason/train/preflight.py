"""Checks of a run's inputs that need more than the config file (the mesh, the tokenizer, the step's metric
names), made before anything expensive: before weights are read and before the step compiles. Each error names
the config key or file at fault and what to change."""

from __future__ import annotations

from jax.sharding import Mesh

from rlreason.config import Config, ConfigError
from rlreason.parallel.rules import Rules, batch_shards
from rlreason.tokenizers import Tokenizer, TokenizerError
from rlreason.tokenizers.templates import check_reasoning_tags, render_prompt
from rlreason.verifiers.base import get_reward_fn

# Templates whose prompts ask the model for <think> ... </think> <answer> ... </answer>.
R1_TEMPLATES = ("r1_zero", "r1_short")


def check_batch_geometry(cfg: Config, mesh: Mesh, rules: Rules) -> None:
    """train.batch_size must split evenly over the devices of the batch's mesh axes (data and fsdp)."""
    axes = rules["batch"]
    split = batch_shards(mesh, rules)
    if cfg.train.batch_size % split:
        sizes = " * ".join(f"mesh.{axis}={mesh.shape[axis]}" for axis in axes)
        raise ConfigError(f"config key 'train.batch_size' ({cfg.train.batch_size} prompts) must be a multiple of "
                          f"{sizes} = {split}, the devices a batch is split over; set train.batch_size to a "
                          f"multiple of {split}, or move devices to mesh.tensor")


def check_tokenizer(cfg: Config, tokenizer: Tokenizer, source: str) -> None:
    """The tokenizer renders the configured template and, for the R1 templates, can write the R1 tags.
    `source` says where the tokenizer came from, for the messages."""
    template = cfg.tokenizer.template
    try:
        render_prompt("1 + 1", template, tokenizer)
        if template in R1_TEMPLATES:
            check_reasoning_tags(tokenizer)
    except TokenizerError as error:
        raise TokenizerError(f"{error} (the tokenizer of {source}, with tokenizer.template={template!r}): use a "
                             f"tokenizer that has what the template needs (rlreason pretrain trains one with the "
                             f"R1 tags), or another tokenizer.template") from None


def check_best_metric(cfg: Config, metric_names: list[str]) -> None:
    """checkpoint.best_metric (which checkpoint.keep_best ranks by) names one of `metric_names`: the step's
    metrics, and the evaluation's (eval/<set>/<metric>) when train.eval_every > 0."""
    if cfg.checkpoint.best_metric not in metric_names:
        raise ConfigError(f"config key 'checkpoint.best_metric' got {cfg.checkpoint.best_metric!r}, which is not "
                          f"a metric of the step (nor of an evaluation); choose one of "
                          f"{', '.join(sorted(metric_names))}")


def check_reward_names(cfg: Config) -> None:
    """Every entry of grpo.rewards names a registered reward function (registered on import, so not checkable
    when the config loads)."""
    for index, reward in enumerate(cfg.grpo.rewards):
        try:
            get_reward_fn(reward.name)
        except ValueError as error:
            raise ConfigError(f"config key 'grpo.rewards[{index}].name': {error}") from None
