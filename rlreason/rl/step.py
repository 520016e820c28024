"""The GRPO step: sample, score, compute advantages, and update, as one compiled pure function.

    step(state, batch) -> (state, metrics, samples)

`batch` holds only prompts (see rlreason.data.pipeline); the RNG travels in the state, so a step is a
deterministic function of its inputs. The same three phases also exist as separately compiled functions
(`GRPOFunctions.rollout / score / learn`) for the split-step debugging mode; the fused step calls the very
same functions, so both modes compute the same thing. DAPO's refill mode of dynamic sampling drives the compiled
phases from the host (`refill_phases`), since it samples a data-dependent number of batches.

`learn` reads top to bottom: rewards per function -> shaped rewards -> advantages; which tokens carry loss;
pi_old (the sampler's, or the trainer's with an off-policy correction); then num_iterations passes of
num_minibatches optimizer updates, each summing gradient_accumulation_steps micro-batches. The variants come
from the registries of rlreason.rl.advantages / losses / off_policy (docs/algorithms.md).

Shapes: P prompts, G = num_generations, B = P * G rows (group-contiguous), Tp prompt and Tc completion
length, K reward functions, U = B / num_minibatches rows per optimizer update.

Minibatches, micro-batches and the no-gradient forward passes take rows strided (`split_rows`: part p holds
units p, p + parts, ... of `RowSplit.unit` rows), not in contiguous blocks: the mesh holds rows in contiguous
blocks per device, so a strided part takes its share of every device's block and no device computes another
device's rows. A minibatch's unit is one row on every mesh, so each optimizer update sees the same rows on any
number of devices; passes after the first deal each window of num_minibatches rows to the minibatches afresh
(`pass_order`, grpo.shuffle_minibatches), which keeps that true. A micro-batch's or forward chunk's unit is all
of a prompt's rows where every device's prompts divide among the parts. Either way a part's forward pass runs
each of its prompts once for all of the prompt's rows it holds (`RowSplit.rows_per_prompt`,
rlreason.models.logprobs.completion_hidden).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from rlreason.config import GRPOConfig, LoraConfig, ModelConfig
from rlreason.models.lora import with_adapters
from rlreason.models.logprobs import completion_logprobs
from rlreason.models.transformer import Layout, laid_out
from rlreason.parallel.host_data import gather_rows
from rlreason.rl.advantages import Advantages, compute_advantages, process_advantages
from rlreason.rl.controls import make_reward_control
from rlreason.rl.losses import LOSS_AGGREGATIONS, loss_settings, make_token_loss
from rlreason.rl.off_policy import OFF_POLICY_CORRECTIONS, OffPolicySettings, mismatch_metrics
from rlreason.rl.shaping import soft_overlong_penalty
from rlreason.sampling.sampler import Rollout, SamplingParams, generate_groups
from rlreason.sampling.tools import ToolTurns, tool_metrics
from rlreason.search.prm import step_scores
from rlreason.verifiers.combine import combine_rewards, reward_metrics
from rlreason.verifiers.lenient import verdicts

# score(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes) -> rewards [B, K]
Scorer = Callable[..., jax.Array]


class RowSplit(NamedTuple):
    """How a batch of group-contiguous rows (each prompt's rows next to each other) splits into `parts` parts:
    `unit` consecutive rows go to a part together; each part then holds `prompts` runs of `rows_per_prompt`
    consecutive rows that share a prompt (1: no two rows of a part share one)."""

    parts: int
    unit: int
    prompts: int
    rows_per_prompt: int


def plan_split(prompts: int, rows_per_prompt: int, parts: int, row_shards: int, share_prompts: bool,
               whole_runs: bool) -> RowSplit:
    """The split of `prompts` runs of `rows_per_prompt` rows, held in `row_shards` contiguous blocks (devices),
    into `parts`. With `whole_runs`, whole runs go to a part where every block's runs divide among the parts
    (each device keeps its rows): for micro-batches and forward chunks, whose results do not depend on which rows
    go together. Otherwise single rows strided, the same on every mesh (minibatches: each is an optimizer
    update); their parts still hold rows_per_prompt / parts rows of every prompt where that divides. Without
    `share_prompts`, single rows strided and no runs."""
    if share_prompts and whole_runs and prompts % (row_shards * parts) == 0:
        return RowSplit(parts, rows_per_prompt, prompts // parts, rows_per_prompt)
    if share_prompts and rows_per_prompt % parts == 0:
        return RowSplit(parts, 1, prompts, rows_per_prompt // parts)
    return RowSplit(parts, 1, prompts * rows_per_prompt // parts, 1)


def split_rows(x: jax.Array, split: RowSplit, order: jax.Array | None = None) -> jax.Array:
    """[B, ...] -> [parts, B / parts, ...], part p holding units p, p + parts, p + 2 * parts, ... of split.unit
    rows. With `order` [B / (parts * unit), parts] (a permutation of the parts per window of parts * unit
    consecutive rows, `pass_order`), part p holds unit order[w, p] of each window w instead."""
    units = x.reshape(-1, split.parts, split.unit, *x.shape[1:])
    if order is not None:
        units = jnp.take_along_axis(units, order.reshape(*order.shape, *(1,) * (units.ndim - 2)), axis=1)
    return jnp.swapaxes(units, 0, 1).reshape(split.parts, -1, *x.shape[1:])


def pass_order(rng: jax.Array, pass_index: jax.Array, rows: int, split: RowSplit) -> jax.Array:
    """Which unit of each window goes to which part on pass `pass_index` over `rows` rows: [windows, parts]
    for split_rows, the identity on pass 0 and a fresh random permutation per window on every later pass.

    A window is parts * unit consecutive rows, so every part still takes one unit of each window: the rows stay
    in their device's contiguous block (a window never straddles two where the split keeps devices' rows
    apart), a prompt's rows stay next to each other in a part, and the draw does not depend on the mesh."""
    windows = rows // (split.parts * split.unit)
    shuffled = jnp.argsort(jax.random.uniform(jax.random.fold_in(rng, pass_index), (windows, split.parts)), axis=1)
    identity = jnp.broadcast_to(jnp.arange(split.parts), (windows, split.parts))
    return jnp.where(pass_index == 0, identity, shuffled)


def merge_rows(x: jax.Array, split: RowSplit) -> jax.Array:
    """The inverse of split_rows: [parts, B / parts, ...] -> [B, ...]."""
    units = x.reshape(split.parts, -1, split.unit, *x.shape[2:])
    return jnp.swapaxes(units, 0, 1).reshape(-1, *x.shape[2:])


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: completed optimizer steps of the run
    params: Any  # what the optimizer trains: the model's params, or a LoRA run's adapters
    opt_state: Any
    ref_params: Any  # None when beta == 0 or with LoRA (whose reference is `base`): no copy is kept
    rng: jax.Array  # key for the next step's sampling
    base: Any = None  # a LoRA run's frozen (maybe quantized) base model; None: full fine-tuning. Never saved.
    process_reward_model: Any = None  # (params, head) of grpo.process_reward's PRM, frozen; None: none. Never saved.


def init_train_state(params, optimizer: optax.GradientTransformation, rng: jax.Array, keep_reference: bool,
                     shardings: TrainState | None = None, base=None) -> TrainState:
    """A fresh state, built by one compiled function so that every array is created where `shardings` says
    (a TrainState of NamedShardings; None: the default device). With a LoRA `base`, `params` are its adapters and
    no reference copy is made: the base is the reference."""

    def build(params, rng, base):
        reference = (jax.tree.map(lambda leaf: leaf + jnp.zeros_like(leaf), params)
                     if keep_reference and base is None else None)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          ref_params=reference, rng=rng, base=base)

    return jax.jit(build, out_shardings=shardings)(params, rng, base)


def model_params(params, base, lora: LoraConfig):
    """The weights the model runs with: `params`, or (a LoRA run, `base` given) the base with `params` as its
    adapters."""
    return params if base is None else with_adapters(base, params, lora)


class Learned(NamedTuple):
    """Per-update sums gathered by the scan over updates: each [num_iterations * num_minibatches].

    Token statistics are sums over the update's loss-mask tokens, so that the step's figures are token-weighted
    means over every micro-batch and update (TRL's meaning), not means of per-micro-batch means."""

    loss: jax.Array
    grad_norm: jax.Array
    tokens: jax.Array
    entropy: jax.Array
    kl: jax.Array
    ratio: jax.Array
    ratio_min: jax.Array
    ratio_max: jax.Array
    clip_low: jax.Array
    clip_high: jax.Array
    nonfinite: jax.Array  # bool: the update's loss or gradient norm was NaN/Inf, so it was skipped


class Samples(NamedTuple):
    """What the step sampled, for logging: the rollout [B rows], each reward function's scores [B, K] and the
    advantage each row was trained with [B]."""

    rollout: Rollout
    rewards: jax.Array
    advantages: jax.Array


class ProcessReward(NamedTuple):
    """How the step scores its rollouts' steps with the PRM of grpo.process_reward (its params and head travel in
    TrainState.process_reward_model): the PRM's model config, its step delimiters [V] bool, and the weight of
    its per-token advantages."""

    cfg: ModelConfig
    is_delimiter: np.ndarray
    weight: float


@dataclasses.dataclass(frozen=True)
class GRPOFunctions:
    rollout: Callable  # (params, batch, rng) -> Rollout                      [B rows]
    score: Callable  # (rollout, gold_bytes [B, Lg]) -> rewards [B, K]
    learn: Callable  # (state, rollout, rewards [B, K]) -> (state, metrics)
    step: Callable  # (state, batch) -> (state, metrics, Samples)
    groups_with_spread: Callable  # rewards [B, K] -> [P] bool: the group's rewards are not all equal
    select_groups: Callable  # ([Rollout], [rewards [B, K]], chosen [P, 2] (draw, group)) -> (Rollout, rewards)
    policy: Callable  # state -> the params the policy runs with (rollout's first argument)
    # (state, rollout) -> the reference's log-probs [B, Tc], the pass `learn` makes when grpo.beta > 0 (for timing)
    reference_logprobs: Callable


def make_grpo_functions(grpo: GRPOConfig, model_cfg: ModelConfig, sampling: SamplingParams,
                        optimizer: optax.GradientTransformation, scorer: Scorer, stop_ids: tuple[int, ...],
                        pad_id: int, reward_names: tuple[str, ...], accuracy_reward: str,
                        learning_rate_fn: Callable[[jax.Array], jax.Array],
                        tools: ToolTurns | None = None,
                        arrays: Layout = Layout(),
                        state_sharding: Callable[[TrainState], TrainState] = lambda state: state,
                        lora: LoraConfig = LoraConfig(),
                        process_reward: ProcessReward | None = None, row_shards: int = 1) -> GRPOFunctions:
    """Builds the (uncompiled) pure functions of a GRPO step; `compile_grpo` jits them.

    `tools`: the run's tool turns (rlreason.sampling.tools; None: none). The rollout then holds the tools'
    results, which no loss, ratio or entropy figure counts: the policy did not sample them.

    `reward_names` names the scorer's columns: grpo.rewards in order, then the metric-only functions that the
    accuracy metrics read (`verifiers.lenient.metric_only_functions`). `arrays` (rows: the rollout rows, and the
    model's activations) and `state_sharding` (the new state) pin layouts (sharding constraints from
    rlreason.parallel.rules.model_layout); the defaults leave placement to the compiler. `lora`: how a LoRA
    run's adapters (state.params) apply to its base (state.base); unused in full fine-tuning. `process_reward`:
    process supervision by a PRM (None: outcome rewards only). `row_shards`: the devices the rows are split
    over, for the row splits (`plan_split`).
    """
    group_size = grpo.num_generations
    reward_weights = jnp.asarray([reward.weight for reward in grpo.rewards], jnp.float32)
    num_rewards = len(grpo.rewards)  # the scorer's first columns; the metric-only ones follow
    reward_control = make_reward_control(grpo.reward_control, reward_names[:num_rewards], reward_weights)
    temperature = sampling.temperature if sampling.temperature > 0 else 1.0
    sampler_cfg = model_cfg if grpo.rollout_dtype == "model" else dataclasses.replace(model_cfg,
                                                                                      dtype=grpo.rollout_dtype)
    token_loss = make_token_loss(grpo.policy_loss, grpo.importance_sampling_level, grpo.kl_estimator,
                                 loss_settings(grpo), grpo.beta, grpo.entropy_coef)
    aggregation = LOSS_AGGREGATIONS[grpo.loss_type]
    correction = OFF_POLICY_CORRECTIONS[grpo.off_policy_correction]
    off_policy_settings = OffPolicySettings(grpo.off_policy_cap, grpo.off_policy_mask_low, grpo.off_policy_mask_high)

    def forward_split(rows: int) -> RowSplit:
        """The no-gradient forward passes' split of a rollout's `rows`: a micro-batch at a time, like the updates."""
        return plan_split(rows // group_size, group_size, grpo.num_minibatches * grpo.gradient_accumulation_steps,
                          row_shards, grpo.share_prompt_forward, whole_runs=True)

    def update_splits(rows: int) -> tuple[RowSplit, RowSplit]:
        """(minibatches of the rollout's `rows`: rows strided on every mesh, so each optimizer update sees the same
        rows on any number of devices; micro-batches of a minibatch, summed into one update)."""
        minibatch = plan_split(rows // group_size, group_size, grpo.num_minibatches, row_shards,
                               grpo.share_prompt_forward, whole_runs=False)
        return minibatch, plan_split(minibatch.prompts, minibatch.rows_per_prompt, grpo.gradient_accumulation_steps,
                                     row_shards, grpo.share_prompt_forward, whole_runs=True)

    def policy(state: TrainState):
        return model_params(state.params, state.base, lora)

    def reference(state: TrainState):
        """LoRA's reference is the base with the adapters off; full fine-tuning keeps a copy."""
        return state.ref_params if state.base is None else state.base

    def rollout(params, batch, rng) -> Rollout:
        return arrays.rows(generate_groups(params, batch["prompt_tokens"], batch["prompt_mask"], rng, sampler_cfg,
                                            sampling, group_size, stop_ids, pad_id, tools))

    def score(roll: Rollout, gold_bytes) -> jax.Array:
        return scorer(roll.prompt_tokens, roll.prompt_mask, roll.tokens, roll.completion_mask, gold_bytes)

    def batch_logprobs(params, roll: Rollout):
        """Log-probs and entropies [B, Tc] of the rollout's tokens by a forward pass without gradient, one
        micro-batch of rows at a time."""
        split = forward_split(roll.tokens.shape[0])
        logprobs, entropy = jax.lax.map(
            lambda rows: completion_logprobs(params, *arrays.rows(rows), model_cfg, temperature, with_entropy=True,
                                             rows_per_prompt=split.rows_per_prompt),
            tuple(split_rows(x, split) for x in (roll.prompt_tokens, roll.prompt_mask, roll.tokens)))
        return jax.lax.stop_gradient(merge_rows(logprobs, split)), jax.lax.stop_gradient(merge_rows(entropy, split))

    def micro_batch_loss(params, base, rows, denominator, rows_per_prompt: int):
        """Loss of a micro-batch of rows: (numerator / update-batch denominator, token sums for the metrics)."""
        logprobs, entropy = completion_logprobs(model_params(params, base, lora), rows["prompt_tokens"],
                                                rows["prompt_mask"], rows["tokens"], model_cfg, temperature,
                                                with_entropy=True, rows_per_prompt=rows_per_prompt)
        mask = rows["loss_mask"]
        terms = token_loss(logprobs, entropy, rows["old_logprobs"], rows.get("ref_logprobs"), rows["advantages"],
                           rows["is_weights"], mask)
        loss = aggregation.numerator(terms.loss, mask) / denominator
        masked_sum = lambda values: jnp.sum(values * mask)  # noqa: E731
        stats = Learned(loss, jnp.zeros(()), jnp.sum(mask), masked_sum(entropy), masked_sum(terms.kl),
                        masked_sum(terms.ratio), jnp.min(jnp.where(mask > 0, terms.ratio, jnp.inf)),
                        jnp.max(jnp.where(mask > 0, terms.ratio, -jnp.inf)), masked_sum(terms.low_clipped),
                        masked_sum(terms.high_clipped), jnp.zeros((), bool))
        return loss, stats

    def update(state: TrainState, rows, generation_tokens, micro_split: RowSplit):
        """One optimizer update on U rows, its gradient summed over `gradient_accumulation_steps` micro-batches.

        Every micro-batch divides by the denominator of all U rows, so the summed gradient is exactly the
        gradient of the U-row loss. An update whose loss or gradient norm is not finite leaves the params and
        the optimizer state as they were: one NaN would otherwise poison both for the rest of the run.
        """
        denominator = aggregation.denominator(rows["loss_mask"], generation_tokens, grpo.num_minibatches)
        micro_batches = jax.tree.map(lambda x: split_rows(x, micro_split), rows)

        def accumulate(grads_sum, micro_rows):
            grads, stats = jax.grad(micro_batch_loss, has_aux=True)(state.params, state.base,
                                                                    arrays.rows(micro_rows), denominator,
                                                                    micro_split.rows_per_prompt)
            return jax.tree.map(jnp.add, grads_sum, grads), stats

        grads, micro = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, state.params), micro_batches)
        stats = jax.tree.map(jnp.sum, micro)._replace(ratio_min=jnp.min(micro.ratio_min),
                                                      ratio_max=jnp.max(micro.ratio_max))
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(stats.loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        state = state.replace(params=keep_if_finite(params, state.params),
                              opt_state=keep_if_finite(opt_state, state.opt_state))
        return state, stats._replace(grad_norm=grad_norm, nonfinite=~finite)

    def learn(state: TrainState, roll: Rollout, rewards_per_function):
        """(state, rollout [B rows], rewards_per_function [B, K]) -> (new state, metrics, advantages [B])."""
        # (metric function, its arguments), called after the update: see the barrier there.
        metrics_later: list[tuple[Callable[..., dict], tuple]] = []
        # Rewards -> advantages. Shaping from the rollout (soft overlong punishment) is one more reward column, NaN
        # where no function scored the row so that such rows keep advantage 0.
        lengths = jnp.sum(roll.completion_mask, axis=1)
        scored = rewards_per_function[:, :num_rewards]  # the metric-only columns after them earn nothing
        shaped, weights = scored, reward_weights
        if grpo.overlong_buffer_length > 0:
            penalty = soft_overlong_penalty(lengths, sampling.max_new_tokens, grpo.overlong_buffer_length)
            unscored = jnp.all(jnp.isnan(scored), axis=1)
            shaped = jnp.concatenate([shaped, jnp.where(unscored, jnp.nan, penalty)[:, None]], axis=1)
            weights = jnp.concatenate([weights, jnp.asarray([grpo.overlong_penalty_factor], jnp.float32)])
            metrics_later.append((overlong_metrics, (penalty,)))
        # A control (grpo.reward_control) replaces the reward by one unlinked from the completions.
        rewards = reward_control(combine_rewards(shaped, weights), scored, jax.random.fold_in(state.rng, 1))
        advantages = compute_advantages(rewards, shaped, weights, group_size, grpo.advantage_estimator,
                                        grpo.scale_rewards, grpo.normalize_rewards_per_function)

        # Which tokens count: the completion, less tool results, truncated completions and zero-weight groups.
        loss_mask = roll.completion_mask.astype(jnp.float32)
        if tools is not None:
            loss_mask = loss_mask * (1 - roll.observation_mask)
        if grpo.mask_truncated_completions:
            loss_mask = loss_mask * (~roll.truncated)[:, None]
        if grpo.dynamic_sampling != "none":  # refill: groups topped up after max_sampling_draws
            loss_mask = loss_mask * ~jnp.repeat(advantages.zero_std, group_size)[:, None]

        # pi_old: the sampler's log-probs, or the trainer's recomputed ones with the off-policy correction.
        old_logprobs, is_weights = roll.logprobs, jnp.ones_like(loss_mask)
        if grpo.recompute_old_logprobs:
            old_logprobs, old_entropy = batch_logprobs(policy(state), roll)
            is_weights, keep = correction(old_logprobs, roll.logprobs, loss_mask, off_policy_settings)
            metrics_later.append((off_policy_metrics, (old_logprobs, roll.logprobs, is_weights, keep, loss_mask)))
            loss_mask = loss_mask * keep
            if grpo.top_entropy_quantile < 1:
                threshold = jnp.nanquantile(jnp.where(loss_mask > 0, old_entropy, jnp.nan),
                                            1.0 - grpo.top_entropy_quantile)
                loss_mask = loss_mask * (old_entropy >= threshold)

        # Process supervision: per-token advantages [B, Tc], the outcome's plus the PRM's.
        token_advantages = advantages.advantages
        if process_reward is not None:
            step_rewards, step_ends = step_scores(*state.process_reward_model, process_reward.cfg,
                                                  jnp.asarray(process_reward.is_delimiter), roll.prompt_tokens,
                                                  roll.prompt_mask, roll.tokens, roll.completion_mask)
            token_advantages = advantages.advantages[:, None] + process_reward.weight * process_advantages(
                step_rewards, step_ends, group_size)
            metrics_later.append((process_reward_metrics, (step_rewards, step_ends)))

        rows = {"prompt_tokens": roll.prompt_tokens, "prompt_mask": roll.prompt_mask, "tokens": roll.tokens,
                "old_logprobs": old_logprobs, "advantages": token_advantages, "loss_mask": loss_mask,
                "is_weights": is_weights}
        if grpo.beta > 0:
            rows["ref_logprobs"] = batch_logprobs(reference(state), roll)[0]
        generation_tokens = jnp.sum(loss_mask)
        minibatch_split, micro_split = update_splits(roll.tokens.shape[0])
        shuffle = grpo.shuffle_minibatches and grpo.num_iterations > 1 and grpo.num_minibatches > 1
        shuffle_rng = jax.random.fold_in(state.rng, 2)
        params_before = state.params

        def one_pass(state, pass_index):
            order = pass_order(shuffle_rng, pass_index, roll.tokens.shape[0], minibatch_split) if shuffle else None
            minibatches = jax.tree.map(lambda x: split_rows(x, minibatch_split, order), rows)
            return jax.lax.scan(lambda s, mb: update(s, mb, generation_tokens, micro_split), state, minibatches)

        state, learned = jax.lax.scan(one_pass, state, jnp.arange(grpo.num_iterations))
        learned = jax.tree.map(lambda x: x.reshape(-1), learned)
        state = state.replace(step=state.step + 1)
        if grpo.sync_ref_model:
            due = state.step % grpo.ref_model_sync_steps == 0
            alpha = grpo.ref_model_mixup_alpha
            state = state.replace(ref_params=jax.tree.map(
                lambda policy, ref: jnp.where(due, alpha * policy + (1 - alpha) * ref, ref),
                state.params, state.ref_params))
        state = state_sharding(state)
        metrics_later.append((step_metrics, (roll, rewards_per_function, rewards, advantages, loss_mask, learned)))
        if tools is not None:
            metrics_later.append((tool_metrics, (roll.observation_mask, roll.completion_mask)))
        # The metrics reduce over every device's rows; the barrier computes them after the update on every device.
        # Free to run early, a metric's all-reduce reached first by one device holds one of the CPU client's
        # threads (one per core) until the other device gets there: on 2 simulated devices of a 2-core CPU that
        # serialized the devices' updates in about one step of six (1.4-1.5 s against 1.05 s a step).
        arguments, state = jax.lax.optimization_barrier(([args for _, args in metrics_later], state))
        metrics = {}
        for (metric_function, _), args in zip(metrics_later, arguments):
            metrics.update(metric_function(*args))
        metrics["learning_rate"] = learning_rate_fn(state.step * grpo.num_iterations * grpo.num_minibatches - 1)
        metrics["l2_params"] = optax.global_norm(state.params)
        # The whole step's change (every update of every iteration), not one update's.
        metrics["l2_updates"] = optax.global_norm(jax.tree.map(jnp.subtract, state.params, params_before))
        return state, metrics, advantages.advantages

    def overlong_metrics(penalty) -> dict:
        return {"overlong_penalty": jnp.mean(penalty) * grpo.overlong_penalty_factor}

    def off_policy_metrics(trainer_logprobs, sampler_logprobs, is_weights, keep, loss_mask) -> dict:
        """The sampler/trainer mismatch and the correction's weights, over the tokens the loss counts."""
        tokens = jnp.maximum(jnp.sum(loss_mask), 1)
        return {**mismatch_metrics(trainer_logprobs, sampler_logprobs, loss_mask),
                "off_policy/is_weight_mean": jnp.sum(is_weights * loss_mask) / tokens,
                "off_policy/masked_fraction": 1 - jnp.sum(keep * loss_mask) / tokens}

    def process_reward_metrics(step_rewards, step_ends) -> dict:
        return {"process_reward/step_score": jnp.sum(step_rewards * step_ends) / jnp.maximum(jnp.sum(step_ends), 1),
                "process_reward/steps": jnp.mean(jnp.sum(step_ends, axis=1))}

    def step_metrics(roll: Rollout, rewards_per_function, rewards, advantages: Advantages, loss_mask,
                     learned: Learned) -> dict:
        lengths = jnp.sum(roll.completion_mask, axis=1).astype(jnp.float32)
        terminated = ~roll.truncated
        scored = ~jnp.isnan(rewards)
        tokens = jnp.maximum(jnp.sum(learned.tokens), 1.0)
        first_pass = slice(0, grpo.num_minibatches)  # every row once, each minibatch under the policy it met
        metrics = {
            "reward": jnp.nanmean(rewards),
            "reward_std": jnp.mean(advantages.group_std),  # TRL's: the mean of the groups' stds
            "frac_reward_zero_std": jnp.mean(advantages.zero_std),
            "frac_unscored": 1.0 - jnp.mean(scored),
            "completion_length": jnp.mean(lengths),
            "completion_length_min": jnp.min(lengths),
            "completion_length_max": jnp.max(lengths),
            "terminated_length": jnp.sum(lengths * terminated) / jnp.maximum(jnp.sum(terminated), 1),
            "clipped_ratio": jnp.mean(roll.truncated),
            "completion_tokens": jnp.sum(lengths),
            "loss_tokens": jnp.sum(loss_mask),
            "loss": jnp.mean(learned.loss),
            "grad_norm": jnp.mean(learned.grad_norm),
            "entropy": jnp.sum(learned.entropy[first_pass]) / jnp.maximum(jnp.sum(learned.tokens[first_pass]), 1.0),
            "kl": jnp.sum(learned.kl) / tokens,
            "ratio_mean": jnp.sum(learned.ratio) / tokens,
            "ratio_min": jnp.min(learned.ratio_min),
            "ratio_max": jnp.max(learned.ratio_max),
            "clip_ratio_low": jnp.sum(learned.clip_low) / tokens,
            "clip_ratio_high": jnp.sum(learned.clip_high) / tokens,
            "clip_ratio_region": jnp.sum(learned.clip_low + learned.clip_high) / tokens,
            "nonfinite_updates": jnp.sum(learned.nonfinite),  # skipped updates (of num_iterations * num_minibatches)
        }
        metrics.update(reward_metrics(rewards_per_function[:, :num_rewards], reward_names[:num_rewards]))
        passed = verdicts(rewards_per_function, reward_names, reward_names[:num_rewards], accuracy_reward)
        metrics.update(accuracy=jnp.mean(passed["answer"]), accuracy_strict=jnp.mean(passed["strict"]),
                       format_rate=jnp.mean(passed["format"]))
        if "lenient" in passed:  # not when scored on tokens (grpo.scoring=jax)
            metrics["accuracy_lenient"] = jnp.mean(passed["lenient"])
        return metrics

    def groups_with_spread(rewards_per_function) -> jax.Array:
        """Judged on the reward functions' weighted sum, before shaping (DAPO filters on accuracy)."""
        scored = rewards_per_function[:, :num_rewards]
        rewards = combine_rewards(scored, reward_weights)
        return ~compute_advantages(rewards, scored, reward_weights, group_size, grpo.advantage_estimator,
                                   grpo.scale_rewards, grpo.normalize_rewards_per_function).zero_std

    def select_groups(rolls: list[Rollout], scores: list[jax.Array], chosen: jax.Array):
        """The chosen groups of several draws as one batch of P groups, in the order chosen."""
        rows = (chosen[:, :1] * scores[0].shape[0] + chosen[:, 1:] * group_size + jnp.arange(group_size)).reshape(-1)
        pick = lambda *draws: jnp.concatenate(draws)[rows]  # noqa: E731
        return arrays.rows(jax.tree.map(pick, *rolls)), arrays.rows(pick(*scores))

    # Each device runs its own rows through every layer and gathers weights, not rows (FSDP).
    rollout, learn = laid_out(rollout, arrays), laid_out(learn, arrays)
    return GRPOFunctions(rollout=rollout, score=score, learn=learn,
                         step=chain_phases(rollout, score, learn, group_size, policy),
                         groups_with_spread=groups_with_spread, select_groups=select_groups, policy=policy,
                         reference_logprobs=laid_out(
                             lambda state, roll: batch_logprobs(reference(state), roll)[0], arrays))


def chain_phases(rollout: Callable, score: Callable, learn: Callable, group_size: int, policy: Callable) -> Callable:
    """The step as rollout -> score -> learn; the phases may be plain or separately compiled functions."""

    def step(state: TrainState, batch):
        rng, sample_rng = jax.random.split(state.rng)
        roll = rollout(policy(state), batch, sample_rng)
        rewards_per_function = score(roll, jnp.repeat(batch["gold_bytes"], group_size, axis=0))
        state, metrics, advantages = learn(state.replace(rng=rng), roll, rewards_per_function)
        return state, metrics, Samples(roll, rewards_per_function, advantages)

    return step


class Refill(NamedTuple):
    """Where DAPO's dynamic sampling (grpo.dynamic_sampling=refill) gets more prompts: `draw()` returns the next
    global prompt batch of the run's stream; at most `max_draws` batches are sampled per step."""

    draw: Callable[[], Any]
    max_draws: int


def refill_phases(rollout: Callable, score: Callable, learn: Callable, groups_with_spread: Callable,
                  select_groups: Callable, group_size: int, refill: Refill, policy: Callable) -> Callable:
    """The step with DAPO's dynamic sampling: sample and score a batch, drop the groups whose rewards are all equal,
    and sample more batches until P groups with a spread are in hand or `refill.max_draws` batches were drawn;
    then learn on those P groups (if the cap is hit, the batch is topped up with dropped groups, which get zero
    weight in the loss).

    The number of draws depends on the rewards, so this runs on the host, over the separately compiled phases:
    one compiled step cannot sample a data-dependent number of batches. Every process sees the same (gathered)
    rewards, so every process draws the same batches.
    """

    def step(state: TrainState, batch):
        rng, sample_rng = jax.random.split(state.rng)
        rolls, scores, kept, dropped = [], [], [], []
        prompts = batch["prompt_tokens"].shape[0]
        while True:
            draw = len(rolls)
            roll = rollout(policy(state), batch, jax.random.fold_in(sample_rng, draw))
            rolls.append(roll)
            scores.append(score(roll, jnp.repeat(batch["gold_bytes"], group_size, axis=0)))
            spread = np.asarray(gather_rows(groups_with_spread(scores[-1])))
            kept += [(draw, group) for group in np.flatnonzero(spread)]
            dropped += [(draw, group) for group in np.flatnonzero(~spread)]
            if len(kept) >= prompts or len(rolls) == refill.max_draws:
                break
            batch = refill.draw()
        chosen = (kept + dropped)[:prompts]
        roll, rewards_per_function = select_groups(rolls, scores, np.asarray(chosen, np.int32))
        state, metrics, advantages = learn(state.replace(rng=rng), roll, rewards_per_function)
        metrics.update({"dynamic_sampling/draws": len(rolls),
                        "dynamic_sampling/dropped_groups": len(dropped),
                        "dynamic_sampling/unfilled_groups": max(prompts - len(kept), 0)})
        return state, metrics, Samples(roll, rewards_per_function, advantages)

    return step


def search_phases(search_rollout: Callable, score: Callable, learn: Callable, group_size: int,
                  policy: Callable) -> Callable:
    """The step with rollouts from a search on the host (rlreason.search.rollouts): `search_rollout(params, batch,
    rng) -> (Rollout, SearchStats)`, then the compiled score and learn phases; the search's figures join the
    step's metrics."""

    def step(state: TrainState, batch):
        rng, sample_rng = jax.random.split(state.rng)
        roll, stats = search_rollout(policy(state), batch, sample_rng)
        rewards_per_function = score(roll, jnp.repeat(batch["gold_bytes"], group_size, axis=0))
        state, metrics, advantages = learn(state.replace(rng=rng), roll, rewards_per_function)
        metrics.update({"search/rows_per_group": stats.search_rows, "search/tokens_per_prompt": stats.tokens_generated})
        return state, metrics, Samples(roll, rewards_per_function, advantages)

    return step


def compile_grpo(functions: GRPOFunctions, group_size: int, split_step: bool, refill: Refill | None = None,
                 search_rollout: Callable | None = None) -> Callable:
    """The step as compiled code: one jitted program, or (split_step) three chained ones, or (refill) the
    compiled phases driven by dynamic sampling, or (search_rollout) the compiled score and learn phases after a
    search on the host.

    Either way the state buffers are donated and the result is the same function of (state, batch).
    """
    if search_rollout is not None:
        return search_phases(search_rollout, jax.jit(functions.score), jax.jit(functions.learn, donate_argnums=0),
                             group_size, functions.policy)
    if refill is not None:
        return refill_phases(jax.jit(functions.rollout), jax.jit(functions.score),
                             jax.jit(functions.learn, donate_argnums=0), jax.jit(functions.groups_with_spread),
                             jax.jit(functions.select_groups), group_size, refill, functions.policy)
    if not split_step:
        return jax.jit(functions.step, donate_argnums=0)
    return chain_phases(jax.jit(functions.rollout), jax.jit(functions.score),
                        jax.jit(functions.learn, donate_argnums=0), group_size, functions.policy)
