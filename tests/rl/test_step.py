"""The compiled GRPO step: fused vs split, determinism, accumulation equivalence, each loss_type's normalisation
checked from the step's own samples, off-policy passes, masking, dynamic sampling, shaping, off-policy correction
and reference sync."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from test_advantages import reference as numpy_advantages
from tiny_run import tiny_config
from rlreason.rl.step import RowSplit, merge_rows, pass_order, plan_split, split_rows
from rlreason.train.loop import build_trainer

REWARD_WEIGHTS = np.asarray([reward.weight for reward in tiny_config().grpo.rewards])
SCALE_REWARDS = tiny_config().grpo.scale_rewards


@functools.cache
def trainer_for(model_dir: str, overrides: tuple[str, ...]):
    """One compiled trainer per configuration (programs with host callbacks miss the persistent compile
    cache), with its untouched initial state and data position so that every run starts alike."""
    trainer = build_trainer(tiny_config(f"train.model_dir={model_dir}", *overrides))
    return trainer, jax.tree.map(jnp.copy, trainer.state), trainer.batches.get_state()


def run_steps_with_samples(model_dir, steps=2, *overrides):
    """(every step's state, metrics and Samples) from the trainer's initial state, on host memory."""
    trainer, initial_state, data_start = trainer_for(str(model_dir), overrides)
    trainer.batches.set_state(data_start)
    state, states, history, samples = jax.tree.map(jnp.copy, initial_state), [], [], []
    for _ in range(steps):  # the step donates its input state
        state, metrics, step_samples = trainer.step_fn(state, trainer.prompt_batch(next(trainer.batches)))
        states.append(jax.device_get(state))
        history.append({key: float(value) for key, value in jax.device_get(metrics).items()})
        samples.append(jax.device_get(step_samples))
    return jax.device_get(initial_state), states, history, samples


def run_steps(model_dir, steps=2, *overrides):
    _, states, history, _ = run_steps_with_samples(model_dir, steps, *overrides)
    return states[-1].params, history


def assert_same_trees(first, second, **tolerance):
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_allclose(a, b, **tolerance) if tolerance else np.testing.assert_array_equal(a, b)


def test_step_is_deterministic_for_a_fixed_seed(tiny_base_model):
    params_a, history_a = run_steps(tiny_base_model)
    params_b, history_b = run_steps(tiny_base_model)
    assert history_a == history_b
    assert_same_trees(params_a, params_b)
    _, other_seed = run_steps(tiny_base_model, 2, "train.seed=1")
    assert other_seed != history_a


def test_split_step_agrees_with_the_fused_step(tiny_base_model):
    params_fused, fused = run_steps(tiny_base_model)
    params_split, split = run_steps(tiny_base_model, 2, "train.split_step=true")
    for fused_metrics, split_metrics in zip(fused, split):
        assert fused_metrics.keys() == split_metrics.keys()
        for key in fused_metrics:
            np.testing.assert_allclose(split_metrics[key], fused_metrics[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert_same_trees(params_fused, params_split, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_gradient_accumulation_gives_the_single_batch_update(tiny_base_model, loss_type):
    loss = () if loss_type == "grpo" else (f"grpo.loss_type={loss_type}",)  # grpo: reuse the default trainer
    params_one, one = run_steps(tiny_base_model, 1, *loss)
    params_four, four = run_steps(tiny_base_model, 1, *loss, "grpo.gradient_accumulation_steps=4")
    np.testing.assert_allclose(four[0]["grad_norm"], one[0]["grad_norm"], rtol=1e-5)
    assert_same_trees(params_one, params_four, rtol=1e-5, atol=1e-7)


def test_shared_prompt_forwards_give_the_per_row_update(tiny_base_model):
    """Each micro-batch holds two whole groups; its forward passes (policy and reference) run each prompt once for
    its four rows or once per row (grpo.share_prompt_forward): the same update, KL and entropy, to float rounding."""
    settings = ("grpo.gradient_accumulation_steps=2", "grpo.beta=0.04")
    params_shared, shared = run_steps(tiny_base_model, 1, *settings, "grpo.share_prompt_forward=true")
    params_rows, rows = run_steps(tiny_base_model, 1, *settings)
    for key in ("loss", "grad_norm", "kl", "entropy", "ratio_mean"):
        np.testing.assert_allclose(shared[0][key], rows[0][key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert_same_trees(params_shared, params_rows, rtol=1e-5, atol=1e-7)


def test_row_splits_keep_groups_whole_where_every_device_can():
    """plan_split by hand: 8 prompts x 4 rows into 2 micro-batches on 1 device go as whole groups (prompts 0, 2, 4,
    6 in part 0); on 8 devices (one group each), and as minibatches on any mesh, single rows strided, 2 rows of
    each prompt per part; 3 parts of groups of 4 share nothing. split_rows and merge_rows are inverses."""
    assert plan_split(8, 4, 2, 1, True, whole_runs=True) == RowSplit(parts=2, unit=4, prompts=4, rows_per_prompt=4)
    strided_runs = RowSplit(parts=2, unit=1, prompts=8, rows_per_prompt=2)
    assert plan_split(8, 4, 2, 8, True, whole_runs=True) == strided_runs
    assert plan_split(8, 4, 2, 1, True, whole_runs=False) == strided_runs
    assert plan_split(8, 4, 3, 1, True, whole_runs=True).rows_per_prompt == 1  # 8 prompts do not divide in 3
    assert plan_split(8, 4, 2, 1, False, whole_runs=True) == RowSplit(parts=2, unit=1, prompts=16, rows_per_prompt=1)
    rows = jnp.arange(32)
    whole = split_rows(rows, plan_split(8, 4, 2, 1, True, whole_runs=True))
    np.testing.assert_array_equal(whole[0], [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27])
    np.testing.assert_array_equal(split_rows(rows, strided_runs)[0], np.arange(0, 32, 2))
    for split in (plan_split(8, 4, 2, 1, True, whole_runs=True), strided_runs):
        np.testing.assert_array_equal(merge_rows(split_rows(rows, split), split), rows)


def test_later_passes_deal_each_window_of_rows_to_the_minibatches_afresh():
    """8 prompts x 4 rows in 2 minibatches (runs of 2 rows per prompt), held by 4 devices in blocks of 8 rows, over
    3 passes: pass 0 is the strided split; every pass gives each row to exactly one minibatch, and each minibatch
    one row of every window of 2 consecutive rows, so a device's share of a minibatch is rows of its own block and
    a prompt's rows stay adjacent; passes 1 and 2 draw different deals, the same on any mesh."""
    rows, parts, devices = jnp.arange(32), 2, 4
    split = plan_split(8, 4, parts, 1, True, whole_runs=False)
    assert split == plan_split(8, 4, parts, devices, True, whole_runs=False)  # a minibatch split ignores the mesh
    rng = jax.random.key(0)
    deals = [np.asarray(split_rows(rows, split, pass_order(rng, jnp.asarray(i), 32, split))) for i in range(3)]
    np.testing.assert_array_equal(deals[0], split_rows(rows, split))
    for deal in deals:
        np.testing.assert_array_equal(np.sort(deal.reshape(-1)), np.arange(32))
        np.testing.assert_array_equal(deal // parts, np.broadcast_to(np.arange(16), (parts, 16)))
        device_of_position = np.repeat(np.arange(devices), 16 // devices)
        np.testing.assert_array_equal(deal // 8, np.broadcast_to(device_of_position, (parts, 16)))
        runs = deal.reshape(parts, 8, split.rows_per_prompt) // 4
        assert (runs == runs[..., :1]).all()
    assert not np.array_equal(deals[1], deals[0]) and not np.array_equal(deals[2], deals[1])


def test_on_policy_step_reports_zero_loss_with_a_nonzero_gradient(tiny_base_model):
    _, history = run_steps(tiny_base_model, 1)  # num_iterations 1, beta 0 (the tiny config's)
    metrics = history[0]
    assert metrics["reward_std"] > 0, "the tiny base model should produce groups with different rewards"
    assert abs(metrics["loss"]) < 1e-5
    assert metrics["grad_norm"] > 1e-4
    assert abs(metrics["ratio_mean"] - 1.0) < 1e-4


SEVERAL_UPDATES = ("grpo.num_iterations=2", "grpo.num_minibatches=2", "grpo.beta=0.04", "grpo.optim.learning_rate=0.02",
                   "grpo.optim.warmup_steps=0")


def test_several_updates_per_batch_move_off_policy_clip_and_track_kl(tiny_base_model):
    _, history = run_steps(tiny_base_model, 1, *SEVERAL_UPDATES)
    metrics = history[0]
    assert metrics["kl"] > 0  # later updates see a policy that moved away from the reference
    assert metrics["ratio_max"] > 1.0 + 1e-4 or metrics["ratio_min"] < 1.0 - 1e-4
    # The first update is on-policy (ratio ~1, nothing clipped): clipping comes from the later ones.
    assert metrics["clip_ratio_region"] > 0
    for key in ("clip_ratio_low", "clip_ratio_high", "entropy", "learning_rate", "frac_reward_zero_std",
                "rewards/r1_format", "rewards/exact_answer", "accuracy", "accuracy_strict", "accuracy_lenient",
                "format_rate", "completion_length", "clipped_ratio"):
        assert np.isfinite(metrics[key]), key


def test_the_second_pass_takes_other_minibatches_than_the_first(tiny_base_model):
    """grpo.shuffle_minibatches (the default) changes the second pass's minibatches, so the step ends elsewhere
    than with the first pass's minibatches repeated; the first pass is the same either way."""
    params_shuffled, shuffled = run_steps(tiny_base_model, 1, *SEVERAL_UPDATES)
    params_repeated, repeated = run_steps(tiny_base_model, 1, *SEVERAL_UPDATES, "grpo.shuffle_minibatches=false")
    assert shuffled[0]["entropy"] == pytest.approx(repeated[0]["entropy"], rel=1e-5)  # over the first pass
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params_shuffled),
                                                                    jax.tree.leaves(params_repeated)))
    assert difference > 1e-3  # a learning rate of 0.02: a different second pass moves some params by ~lr


def sample_arrays(samples):
    """(combined rewards [B], completion lengths [B], truncated [B]) of one step's Samples, float64. The reward
    functions' columns come first; the metric-only ones after them earn nothing."""
    per_function = np.asarray(samples.rewards, np.float64)[:, :len(REWARD_WEIGHTS)]
    scored = ~np.isnan(per_function)
    rewards = np.where(scored.any(1), np.where(scored, per_function, 0.0) @ REWARD_WEIGHTS, np.nan)
    roll = samples.rollout
    return rewards, np.asarray(roll.completion_mask).sum(1).astype(np.float64), np.asarray(roll.truncated)


def update_losses(loss_type, advantages, lengths, width, num_updates):
    """On-policy (ratio 1, beta 0) each token's loss is -A_i: each update's loss by the ALGORITHMS.md table. Update u
    takes every num_updates-th row from row u (the step splits minibatches' rows strided)."""
    losses = []
    for rows in (np.arange(len(lengths))[update::num_updates] for update in range(num_updates)):
        token_sum = -np.sum(advantages[rows] * lengths[rows])
        losses.append({"grpo": -np.mean(advantages[rows]), "bnpo": token_sum / lengths[rows].sum(),
                       "dr_grpo": token_sum / (len(rows) * width),
                       "dapo": token_sum / (lengths.sum() / num_updates)}[loss_type])
    return np.mean(losses)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_reported_loss_follows_the_loss_type_normalisation(tiny_base_model, loss_type):
    """Two minibatches of two micro-batches each, at a learning rate too small to move the policy: the loss the
    step reports equals each loss_type's formula computed here from the step's own samples, and not the others'."""
    _, _, history, samples = run_steps_with_samples(
        tiny_base_model, 1, f"grpo.loss_type={loss_type}", "grpo.num_minibatches=2",
        "grpo.gradient_accumulation_steps=2", "grpo.optim.learning_rate=0.000000001", "grpo.optim.warmup_steps=0")
    rewards, lengths, _ = sample_arrays(samples[0])
    advantages = numpy_advantages(rewards, 4, "grpo", SCALE_REWARDS)
    width = samples[0].rollout.tokens.shape[1]
    expected = {name: update_losses(name, advantages, lengths, width, 2) for name in ("grpo", "bnpo", "dr_grpo",
                                                                                      "dapo")}
    # The sampler's and the trainer's float32 log-probs differ by ~1e-6, so the ratio is 1 to ~1e-5.
    tolerance = 1e-4
    np.testing.assert_allclose(history[0]["loss"], expected[loss_type], atol=tolerance)
    assert abs(history[0]["ratio_mean"] - 1) < 1e-4
    # Every other normalisation lies well outside that tolerance, so the match above singles this one out.
    others = {name: abs(value - expected[loss_type]) for name, value in expected.items() if name != loss_type}
    assert min(others.values()) > 5 * tolerance, ("the samples should tell this normalisation from the others",
                                                  expected)


def test_truncation_mask_zero_weight_groups_and_soft_overlong_in_the_step(tiny_base_model):
    """mask_truncated_completions and dynamic_sampling=zero_weight leave exactly the tokens of terminated
    completions in groups with a reward spread; the soft overlong penalty enters the rewards the groups are judged
    by."""
    max_length, buffer = 12, 6
    _, _, history, samples = run_steps_with_samples(
        tiny_base_model, 1, "grpo.mask_truncated_completions=true", "grpo.dynamic_sampling=zero_weight",
        f"grpo.overlong_buffer_length={buffer}", f"sampling.max_completion_length={max_length}")
    metrics = history[0]
    rewards, lengths, truncated = sample_arrays(samples[0])
    assert truncated.any() and not truncated.all()
    penalty = np.where(lengths > max_length, -1.0, np.clip(((max_length - buffer) - lengths) / buffer, -1, 0))
    assert penalty.min() < 0
    np.testing.assert_allclose(metrics["overlong_penalty"], penalty.mean(), rtol=1e-6)
    shaped = (rewards + penalty).reshape(-1, 4)
    zero_std = np.array([np.all(np.isnan(g)) or np.nanmax(g) == np.nanmin(g) for g in shaped])
    np.testing.assert_allclose(metrics["frac_reward_zero_std"], zero_std.mean())
    kept = ~truncated & ~np.repeat(zero_std, 4)
    assert metrics["loss_tokens"] == lengths[kept].sum()


def test_bfloat16_sampling_shows_mismatch_and_truncated_importance_weights(tiny_base_model):
    _, _, history, samples = run_steps_with_samples(
        tiny_base_model, 1, "grpo.rollout_dtype=bfloat16", "grpo.recompute_old_logprobs=true",
        "grpo.off_policy_correction=token_truncate", "grpo.off_policy_cap=1.01", "grpo.top_entropy_quantile=0.2")
    metrics = history[0]
    assert metrics["mismatch/logprob_diff_mean"] > 1e-4 and metrics["mismatch/token_prob_error"] > 1e-4
    assert metrics["mismatch/logprob_diff_max"] >= metrics["mismatch/logprob_diff_mean"]
    assert abs(metrics["off_policy/is_weight_mean"] - 1) > 1e-5
    # pi_old is the trainer's: the first (only) update is on-policy to float32 rounding.
    assert abs(metrics["ratio_mean"] - 1) < 1e-5
    # Only the top 20% of tokens by entropy are trained on (ties at the threshold may add a few).
    assert 0.15 <= metrics["loss_tokens"] / metrics["completion_tokens"] <= 0.3


def test_reference_is_synced_every_ref_model_sync_steps(tiny_base_model):
    initial, states, _, _ = run_steps_with_samples(
        tiny_base_model, 2, "grpo.beta=0.04", "grpo.sync_ref_model=true", "grpo.ref_model_sync_steps=2",
        "grpo.ref_model_mixup_alpha=0.5", "grpo.optim.learning_rate=0.01", "grpo.optim.warmup_steps=0")
    assert_same_trees(states[0].ref_params, initial.params)  # step 1: not due
    mixed = jax.tree.map(lambda policy, ref: 0.5 * policy + 0.5 * ref, states[1].params, initial.params)
    assert_same_trees(states[1].ref_params, mixed, rtol=1e-6, atol=1e-7)
    assert not np.allclose(jax.tree.leaves(states[1].params)[0], jax.tree.leaves(initial.params)[0])


def test_every_metric_is_reduced_after_the_update(tiny_base_model):
    """On a mesh each metric's reduction is an all-reduce. Free to run before the update, one device reached it
    first and held one of the CPU client's threads (one per core) until the other device had updated: the two
    devices' updates ran one after the other. So every metric, the optional features' too (overlong penalty,
    off-policy correction), is computed from the outputs of the barrier that the new state passes through:
    judged on `learn`'s jaxpr, by following the barrier's outputs through the equations after it."""
    trainer = build_trainer(tiny_config(f"train.model_dir={tiny_base_model}", "grpo.overlong_buffer_length=6",
                                        "grpo.recompute_old_logprobs=true", "grpo.beta=0.04"), abstract_state=True)
    roll = jax.eval_shape(trainer.functions.rollout, trainer.state.params,
                          trainer.prompt_batch(next(trainer.batches)), trainer.state.rng)
    rewards = jax.ShapeDtypeStruct((roll.tokens.shape[0], len(tiny_config().grpo.rewards)), jnp.float32)
    closed, outputs = jax.make_jaxpr(trainer.functions.learn, return_shape=True)(trainer.state, roll, rewards)
    barriers = [eqn for eqn in closed.jaxpr.eqns if eqn.primitive.name == "optimization_barrier"]
    assert len(barriers) == 1
    after = set(barriers[0].outvars)
    for eqn in closed.jaxpr.eqns:
        if any(isinstance(var, jax.extend.core.Var) and var in after for var in eqn.invars):
            after.update(eqn.outvars)
    _, metrics, _ = jax.tree.unflatten(jax.tree.structure(outputs), closed.jaxpr.outvars)
    assert {"overlong_penalty", "off_policy/is_weight_mean", "mismatch/token_prob_error", "kl"} <= metrics.keys()
    assert [name for name, var in metrics.items() if var not in after] == []


def test_samples_carry_the_advantages_and_metrics_the_parameter_norms(tiny_base_model):
    """Samples.advantages are the group-relative advantages of the sampled rewards (numpy reference);
    l2_params is the norm of the new parameters and l2_updates that of the whole step's change."""
    initial, states, history, samples = run_steps_with_samples(tiny_base_model, 2)
    rewards, _, _ = sample_arrays(samples[1])
    np.testing.assert_allclose(samples[1].advantages, numpy_advantages(rewards, 4, "grpo", SCALE_REWARDS),
                               rtol=1e-5, atol=1e-5)
    norm = lambda tree: np.sqrt(sum(np.sum(np.asarray(leaf, np.float64) ** 2) for leaf in jax.tree.leaves(tree)))  # noqa: E731
    change = jax.tree.map(lambda new, old: np.asarray(new, np.float64) - old, states[1].params, states[0].params)
    # float32 sums of ~1e5 squares: relative error well under 1e-5. The float32 difference of a parameter before
    # and after a small step is exact (Sterbenz), so the change's norm carries only the sum's error too.
    np.testing.assert_allclose(history[1]["l2_params"], norm(states[1].params), rtol=1e-5)
    np.testing.assert_allclose(history[1]["l2_updates"], norm(change), rtol=1e-4)
    assert history[1]["l2_updates"] > 0
