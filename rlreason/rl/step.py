"""The GRPO step: sample, score, compute advantages, and update, as one compiled pure function.

    step(state, batch) -> (state, metrics, samples)

`batch` holds only prompts (see rlreason.data.pipeline); the RNG travels in the state, so a step is a
deterministic function of its inputs. The same three phases also exist as separately compiled functions
(`GRPOFunctions.rollout / score / learn`) for the split-step debugging mode; the fused step calls the very
same functions, so both modes compute the same thing.

Shapes: P prompts, G = num_generations, B = P * G rows (group-contiguous), Tp prompt and Tc completion
length, K reward functions, U = B / num_minibatches rows per optimizer update.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlreason.config import GRPOConfig, ModelConfig
from rlreason.models.logprobs import completion_logprobs
from rlreason.rl.controls import make_reward_control
from rlreason.rl.advantages import group_advantages
from rlreason.rl.losses import loss_denominator, loss_numerator, token_loss
from rlreason.sampling.sampler import Rollout, SamplingParams, generate_groups
from rlreason.verifiers.combine import combine_rewards, reward_metrics
from rlreason.verifiers.lenient import verdicts

# score(prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes) -> rewards [B, K]
Scorer = Callable[..., jax.Array]


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: completed optimizer steps of the run
    params: Any
    opt_state: Any
    ref_params: Any  # None when beta == 0: no reference model is kept
    rng: jax.Array  # key for the next step's sampling


def init_train_state(params, optimizer: optax.GradientTransformation, rng: jax.Array, keep_reference: bool,
                     shardings: TrainState | None = None) -> TrainState:
    """A fresh state, built by one compiled function so that every array is created where `shardings` says
    (a TrainState of NamedShardings; None: the default device)."""

    def build(params, rng):
        reference = jax.tree.map(lambda leaf: leaf + jnp.zeros_like(leaf), params) if keep_reference else None
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          ref_params=reference, rng=rng)

    return jax.jit(build, out_shardings=shardings)(params, rng)


class Learned(NamedTuple):
    """Per-update quantities gathered by the scan over updates: each [num_iterations * num_minibatches]."""

    loss: jax.Array
    grad_norm: jax.Array
    entropy: jax.Array
    kl: jax.Array
    ratio_mean: jax.Array
    ratio_min: jax.Array
    ratio_max: jax.Array
    clip_low: jax.Array
    clip_high: jax.Array
    nonfinite: jax.Array  # bool: the update's loss or gradient norm was NaN/Inf, so it was skipped


class Samples(NamedTuple):
    """What the step sampled, for logging: the rollout [B rows] and each reward function's scores [B, K]."""

    rollout: Rollout
    rewards: jax.Array


@dataclasses.dataclass(frozen=True)
class GRPOFunctions:
    rollout: Callable  # (params, batch, rng) -> Rollout                      [B rows]
    score: Callable  # (rollout, gold_bytes [B, Lg]) -> rewards [B, K]
    learn: Callable  # (state, rollout, rewards [B, K]) -> (state, metrics)
    step: Callable  # (state, batch) -> (state, metrics, Samples)


def make_grpo_functions(grpo: GRPOConfig, model_cfg: ModelConfig, sampling: SamplingParams,
                        optimizer: optax.GradientTransformation, scorer: Scorer, stop_ids: tuple[int, ...],
                        pad_id: int, reward_names: tuple[str, ...], accuracy_reward: str,
                        learning_rate_fn: Callable[[jax.Array], jax.Array],
                        row_sharding: Callable[[Any], Any] = lambda rows: rows,
                        state_sharding: Callable[[TrainState], TrainState] = lambda state: state) -> GRPOFunctions:
    """Builds the (uncompiled) pure functions of a GRPO step; `compile_grpo` jits them.

    `reward_names` names the scorer's columns: grpo.rewards in order, then the metric-only functions that the
    accuracy metrics read (`verifiers.lenient.metric_only_functions`). `row_sharding` and `state_sharding` pin
    the layout of the rollout rows and of the new state (sharding constraints from rlreason.parallel); the
    defaults leave placement to the compiler.
    """
    group_size = grpo.num_generations
    reward_weights = jnp.asarray([reward.weight for reward in grpo.rewards], jnp.float32)
    num_rewards = len(grpo.rewards)  # the scorer's first columns; the metric-only ones follow
    reward_control = make_reward_control(grpo.reward_control, reward_names[:num_rewards], reward_weights)
    epsilon_high = grpo.epsilon_high or grpo.epsilon
    temperature = sampling.temperature if sampling.temperature > 0 else 1.0

    def rollout(params, batch, rng) -> Rollout:
        return row_sharding(generate_groups(params, batch["prompt_tokens"], batch["prompt_mask"], rng, model_cfg,
                                            sampling, group_size, stop_ids, pad_id))

    def score(roll: Rollout, gold_bytes) -> jax.Array:
        return scorer(roll.prompt_tokens, roll.prompt_mask, roll.tokens, roll.completion_mask, gold_bytes)

    def policy_loss(params, rows, denominator):
        """Loss of a micro-batch of rows: (numerator / update-batch denominator, per-token stats)."""
        logprobs, entropy = completion_logprobs(params, rows["prompt_tokens"], rows["prompt_mask"], rows["tokens"],
                                                model_cfg, temperature, with_entropy=True)
        terms = token_loss(logprobs, rows["old_logprobs"], rows["advantages"], rows.get("ref_logprobs"),
                           grpo.epsilon, epsilon_high, grpo.beta, grpo.kl_estimator)
        mask = rows["loss_mask"]
        loss = loss_numerator(terms.loss, mask, grpo.loss_type) / denominator
        tokens = jnp.maximum(jnp.sum(mask), 1.0)
        masked_mean = lambda values: jnp.sum(values * mask) / tokens  # noqa: E731
        stats = Learned(loss, jnp.zeros(()), masked_mean(entropy), masked_mean(terms.kl), masked_mean(terms.ratio),
                        jnp.min(jnp.where(mask > 0, terms.ratio, jnp.inf)),
                        jnp.max(jnp.where(mask > 0, terms.ratio, -jnp.inf)),
                        masked_mean(terms.low_clipped), masked_mean(terms.high_clipped), jnp.zeros((), bool))
        return loss, stats

    def update(state: TrainState, rows, generation_tokens):
        """One optimizer update on U rows, its gradient summed over `gradient_accumulation_steps` micro-batches.

        Every micro-batch divides by the denominator of all U rows, so the summed gradient is exactly the
        gradient of the U-row loss. An update whose loss or gradient norm is not finite leaves the params and
        the optimizer state as they were: one NaN would otherwise poison both for the rest of the run.
        """
        denominator = loss_denominator(rows["loss_mask"], grpo.loss_type, generation_tokens, grpo.num_minibatches)
        micro_batches = jax.tree.map(lambda x: x.reshape(grpo.gradient_accumulation_steps, -1, *x.shape[1:]), rows)

        def accumulate(grads_sum, micro_rows):
            grads, stats = jax.grad(policy_loss, has_aux=True)(state.params, micro_rows, denominator)
            return jax.tree.map(jnp.add, grads_sum, grads), stats

        grads, micro_stats = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, state.params), micro_batches)
        loss, grad_norm = jnp.sum(micro_stats.loss), optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        stats = Learned(loss=loss, grad_norm=grad_norm,
                        entropy=jnp.mean(micro_stats.entropy), kl=jnp.mean(micro_stats.kl),
                        ratio_mean=jnp.mean(micro_stats.ratio_mean), ratio_min=jnp.min(micro_stats.ratio_min),
                        ratio_max=jnp.max(micro_stats.ratio_max), clip_low=jnp.mean(micro_stats.clip_low),
                        clip_high=jnp.mean(micro_stats.clip_high), nonfinite=~finite)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        state = state.replace(params=keep_if_finite(params, state.params),
                              opt_state=keep_if_finite(opt_state, state.opt_state))
        return state, stats

    def learn(state: TrainState, roll: Rollout, rewards_per_function):
        rewards = combine_rewards(rewards_per_function[:, :num_rewards], reward_weights)
        rewards = reward_control(rewards, rewards_per_function[:, :num_rewards], jax.random.fold_in(state.rng, 1))
        advantages, group_std = group_advantages(rewards, group_size, grpo.scale_rewards)
        loss_mask = roll.completion_mask.astype(jnp.float32)
        if grpo.mask_truncated_completions:
            loss_mask = loss_mask * (~roll.truncated)[:, None]
        rows = {"prompt_tokens": roll.prompt_tokens, "prompt_mask": roll.prompt_mask, "tokens": roll.tokens,
                "old_logprobs": roll.logprobs, "advantages": advantages, "loss_mask": loss_mask}
        if grpo.beta > 0:
            rows["ref_logprobs"] = jax.lax.stop_gradient(completion_logprobs(
                state.ref_params, roll.prompt_tokens, roll.prompt_mask, roll.tokens, model_cfg, temperature))
        generation_tokens = jnp.sum(loss_mask)
        minibatches = jax.tree.map(lambda x: x.reshape(grpo.num_minibatches, -1, *x.shape[1:]), rows)

        def one_pass(state, _):
            return jax.lax.scan(lambda s, mb: update(s, mb, generation_tokens), state, minibatches)

        state, learned = jax.lax.scan(one_pass, state, None, length=grpo.num_iterations)
        learned = jax.tree.map(lambda x: x.reshape(-1), learned)
        state = state_sharding(state.replace(step=state.step + 1))
        metrics = step_metrics(roll, rewards_per_function, rewards, group_std, learned)
        metrics["learning_rate"] = learning_rate_fn(state.step * grpo.num_iterations * grpo.num_minibatches - 1)
        return state, metrics

    def step_metrics(roll: Rollout, rewards_per_function, rewards, group_std, learned: Learned) -> dict:
        lengths = jnp.sum(roll.completion_mask, axis=1).astype(jnp.float32)
        terminated = ~roll.truncated
        scored = ~jnp.isnan(rewards)
        metrics = {
            "reward": jnp.nanmean(rewards),
            "reward_std": jnp.nanstd(rewards),
            "frac_reward_zero_std": jnp.mean(group_std == 0),
            "frac_unscored": 1.0 - jnp.mean(scored),
            "completion_length": jnp.mean(lengths),
            "completion_length_min": jnp.min(lengths),
            "completion_length_max": jnp.max(lengths),
            "terminated_length": jnp.sum(lengths * terminated) / jnp.maximum(jnp.sum(terminated), 1),
            "clipped_ratio": jnp.mean(roll.truncated),
            "completion_tokens": jnp.sum(lengths),
            "loss": jnp.mean(learned.loss),
            "grad_norm": jnp.mean(learned.grad_norm),
            "entropy": learned.entropy[0],  # of the sampling policy, on the first update's forward pass
            "kl": jnp.mean(learned.kl),
            "ratio_mean": jnp.mean(learned.ratio_mean),
            "ratio_min": jnp.min(learned.ratio_min),
            "ratio_max": jnp.max(learned.ratio_max),
            "clip_ratio_low": jnp.mean(learned.clip_low),
            "clip_ratio_high": jnp.mean(learned.clip_high),
            "clip_ratio_region": jnp.mean(learned.clip_low + learned.clip_high),
            "nonfinite_updates": jnp.sum(learned.nonfinite),  # skipped updates (of num_iterations * num_minibatches)
        }
        metrics.update(reward_metrics(rewards_per_function[:, :num_rewards], reward_names[:num_rewards]))
        passed = verdicts(rewards_per_function, reward_names, reward_names[:num_rewards], accuracy_reward)
        metrics.update(accuracy=jnp.mean(passed["answer"]), accuracy_strict=jnp.mean(passed["strict"]),
                       accuracy_lenient=jnp.mean(passed["lenient"]), format_rate=jnp.mean(passed["format"]))
        return metrics

    return GRPOFunctions(rollout=rollout, score=score, learn=learn,
                         step=chain_phases(rollout, score, learn, group_size))


def chain_phases(rollout: Callable, score: Callable, learn: Callable, group_size: int) -> Callable:
    """The step as rollout -> score -> learn; the phases may be plain or separately compiled functions."""

    def step(state: TrainState, batch):
        rng, sample_rng = jax.random.split(state.rng)
        roll = rollout(state.params, batch, sample_rng)
        rewards_per_function = score(roll, jnp.repeat(batch["gold_bytes"], group_size, axis=0))
        state, metrics = learn(state.replace(rng=rng), roll, rewards_per_function)
        return state, metrics, Samples(roll, rewards_per_function)

    return step


def compile_grpo(functions: GRPOFunctions, group_size: int, split_step: bool) -> Callable:
    """The step as compiled code: one jitted program, or (split_step) three chained ones.

    Either way the state buffers are donated and the result is the same function of (state, batch).
    """
    if not split_step:
        return jax.jit(functions.step, donate_argnums=0)
    return chain_phases(jax.jit(functions.rollout), jax.jit(functions.score),
                        jax.jit(functions.learn, donate_argnums=0), group_size)
