"""The sampler against full forward passes: the log-probs GRPO relies on, greedy decoding, reproducibility."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlreason.config import ModelConfig
from rlreason.models.logprobs import completion_logprobs
from rlreason.models.transformer import forward, init_params, positions_from_mask
from rlreason.sampling.sampler import (CDF_BLOCK, SamplingParams, categorical_by_cdf, filter_logits, generate,
                                       nucleus_threshold, sample_token)

CFG = ModelConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=40, init_std=0.4, qkv_bias=True, tie_embeddings=False)
STOP = 3
generate_jit = jax.jit(generate, static_argnames=("cfg", "sampling", "pad_id", "group_size"))


def summation_order_tolerance(logprobs, cache_length: int, cfg: ModelConfig = CFG) -> float:
    """How far two float32 computations of the same log-probs may drift when they only sum in another order (the
    cached decode against a full forward pass, one prefill against G copies): each layer's sums run over at most
    hidden + MLP + cache-slot terms, and the output layer's over the hidden size and the vocabulary, each adding
    gamma_n = n u relative to the values' size."""
    terms = cfg.num_layers * (cfg.hidden_size + cfg.intermediate_size + cache_length) + cfg.hidden_size + cfg.vocab_size
    return 2 * terms * 2.0**-24 * max(1.0, float(np.abs(logprobs).max()))


@pytest.fixture(scope="module")
def setup():
    params = init_params(CFG, jax.random.key(0))
    rng = np.random.default_rng(0)
    mask = np.ones((4, 6), np.int32)
    mask[1, :2] = 0
    mask[2, :5] = 0  # a one-token prompt
    tokens = np.where(mask > 0, rng.integers(4, CFG.vocab_size, (4, 6)), 0).astype(np.int32)
    stops = np.array([[STOP, -1], [STOP, 7], [STOP, -1], [STOP, 12]], np.int32)  # per-row stop tokens
    return params, tokens, mask, stops


@pytest.mark.parametrize("temperature, decode_segments, attention_block_size",
                         [(1.0, 1, 0), (0.7, 1, 0), (1.0, 3, 0), (1.0, 1, 4)])
def test_sampled_logprobs_equal_full_forward_logprobs(setup, temperature, decode_segments, attention_block_size):
    """The last case prefills in causal query blocks (model.attention_block_size); the reference pass does not."""
    params, tokens, mask, stops = setup
    roll = generate_jit(params, tokens, mask, stops, jax.random.key(1),
                        cfg=dataclasses.replace(CFG, attention_block_size=attention_block_size),
                        sampling=SamplingParams(max_new_tokens=12, temperature=temperature,
                                                decode_segments=decode_segments))
    recomputed = completion_logprobs(params, roll.prompt_tokens, roll.prompt_mask, roll.tokens, CFG, temperature)
    completion_mask = np.asarray(roll.completion_mask)
    assert completion_mask.sum() > 12  # something was sampled
    np.testing.assert_allclose(np.asarray(recomputed) * completion_mask, roll.logprobs,
                               atol=summation_order_tolerance(roll.logprobs, 6 + 12))


@pytest.mark.parametrize("decode_segments", [1, 4])
def test_cached_greedy_equals_repeated_full_forward(setup, decode_segments):
    params, tokens, mask, stops = setup
    roll = generate_jit(params, tokens, mask, stops, jax.random.key(1), cfg=CFG,
                        sampling=SamplingParams(max_new_tokens=10, temperature=0.0, decode_segments=decode_segments))
    width = tokens.shape[1] + 10
    # Causal attention: a position's logits do not see the zeros after it, so one compiled width serves every length.
    full_forward = jax.jit(lambda ids: forward(params, ids, positions_from_mask(jnp.ones_like(ids)),
                                               jnp.ones(ids.shape, bool), CFG)[0])
    for row in range(tokens.shape[0]):
        sequence = list(tokens[row][mask[row] > 0])
        expected = []
        for _ in range(10):
            logits = full_forward(jnp.asarray([sequence + [0] * (width - len(sequence))]))
            token = int(jnp.argmax(logits[0, len(sequence) - 1]))
            sequence.append(token)
            expected.append(token)
            if token in stops[row]:
                break
        length = int(roll.completion_mask[row].sum())
        assert list(np.asarray(roll.tokens[row][:length])) == expected
        assert bool(roll.truncated[row]) == (expected[-1] not in stops[row])


@pytest.mark.parametrize("max_new, segments, ends", [(12, 3, (4, 8, 12)), (10, 3, (4, 7, 10)), (64, 1, (64,)),
                                                     (2, 4, (1, 2))])
def test_segments_split_the_completion_into_equal_parts(max_new, segments, ends):
    assert SamplingParams(max_new_tokens=max_new, decode_segments=segments).segment_ends() == ends


def test_each_decode_segment_reads_only_the_cache_written_so_far(setup):
    """Three segments of 12 new tokens after 6 prompt slots: three decode loops, each attending over a cache of
    6 + 4, 6 + 8 and 6 + 12 slots (the keys' last axis), where one segment's loop attends over all 18."""
    params, tokens, mask, stops = setup

    def decode_loop_widths(segments: int) -> list[set[int]]:
        jaxpr = jax.make_jaxpr(lambda p: generate(p, tokens, mask, stops, jax.random.key(1), CFG, SamplingParams(
            max_new_tokens=12, decode_segments=segments)))(params)
        loops = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "while"]
        # A layer's keys [B, K, D, S] are the only 4-D carry whose third axis is the head size.
        return [{var.aval.shape[-1] for var in loop.outvars if var.aval.ndim == 4 and var.aval.shape[2] == CFG.head_dim
                 and var.aval.shape[:2] == (tokens.shape[0], CFG.num_kv_heads)} for loop in loops]

    assert decode_loop_widths(3) == [{10}, {14}, {18}]
    assert decode_loop_widths(1) == [{18}]


def test_stop_tokens_end_rows_and_mask_covers_the_stop(setup):
    params, tokens, mask, stops = setup
    roll = generate_jit(params, tokens, mask, stops, jax.random.key(4), cfg=CFG,
                        sampling=SamplingParams(max_new_tokens=16, temperature=1.5))
    for row in range(tokens.shape[0]):
        length = int(roll.completion_mask[row].sum())
        sampled = list(np.asarray(roll.tokens[row]))
        row_stops = [s for s in stops[row] if s >= 0]
        assert not any(token in row_stops for token in sampled[:length - 1])
        if not roll.truncated[row]:
            assert sampled[length - 1] in row_stops
        assert all(token == 0 for token in sampled[length:])  # pad after the stop
        assert np.all(np.asarray(roll.logprobs[row, length:]) == 0)


def test_same_seed_same_samples_other_seed_other_samples(setup):
    params, tokens, mask, stops = setup
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9)
    first = generate_jit(params, tokens, mask, stops, jax.random.key(7), cfg=CFG, sampling=sampling)
    again = generate_jit(params, tokens, mask, stops, jax.random.key(7), cfg=CFG, sampling=sampling)
    other = generate_jit(params, tokens, mask, stops, jax.random.key(8), cfg=CFG, sampling=sampling)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    np.testing.assert_array_equal(first.logprobs, again.logprobs)
    assert not np.array_equal(first.tokens, other.tokens)


def test_a_key_per_prompt_makes_its_samples_independent_of_the_rest_of_the_batch(setup):
    """Prompt p's samples with key k_p: the same whether p is sampled with the others or alone."""
    params, tokens, mask, stops = setup
    sampling, group = SamplingParams(max_new_tokens=12, temperature=1.0), 3
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(7), jnp.arange(4))
    row_stops = np.repeat(stops, group, axis=0)
    together = generate_jit(params, tokens, mask, row_stops, keys, cfg=CFG, sampling=sampling, group_size=group)
    for prompt in range(4):
        rows = slice(prompt * group, (prompt + 1) * group)
        alone = generate_jit(params, tokens[prompt:prompt + 1], mask[prompt:prompt + 1], row_stops[rows],
                             keys[prompt:prompt + 1], cfg=CFG, sampling=sampling, group_size=group)
        np.testing.assert_array_equal(alone.tokens, together.tokens[rows])
        np.testing.assert_array_equal(alone.completion_mask, together.completion_mask[rows])
    assert len({tuple(row) for row in np.asarray(together.tokens[:group])}) > 1, "a group's samples differ"


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert np.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [[True, True, False, False, False]]
    # Nucleus 0.8: 0.5 + 0.2 = 0.7 < 0.8, so the third token (0.15) is still needed; the fourth is not.
    assert np.isfinite(filter_logits(logits, 0, 0.8)).tolist() == [[True, True, True, False, False]]
    assert np.isfinite(filter_logits(logits, 0, 0.01)).tolist() == [[True, False, False, False, False]]


def _nucleus_float64(logits: np.ndarray, top_p: float) -> np.ndarray:
    """The nucleus by its definition, in float64 with a sort: the tokens whose more likely tokens hold less than
    top_p of the probability, plus every token tied with the least likely of them. [B, V] bool."""
    kept = np.zeros(logits.shape, bool)
    for row, values in enumerate(logits.astype(np.float64)):
        order = np.argsort(-values, kind="stable")
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        before = np.cumsum(probs[order]) - probs[order]
        kept[row] = values >= values[order][before < top_p].min()
    return kept


def test_top_p_without_a_sort_keeps_the_nucleus():
    """The bisection's nucleus is the sorted definition's, on rows with ties, excluded (-inf) tokens, flat
    and peaked distributions (float32 sums may differ from float64 ones only far closer to top_p than these).
    The 60 cases of 4 rows run as one batch, each padded to the widest vocabulary with excluded tokens and with
    its own top_p per row (a [B, 1] top_p broadcasts as the scalar does)."""
    rng = np.random.default_rng(0)
    width = 300
    cases = []
    for trial in range(60):
        vocab = int(rng.integers(2, width))
        logits = (rng.normal(size=(4, vocab)) * rng.uniform(0.1, 5.0)).astype(np.float32)
        if trial % 3 == 0:
            logits = np.round(logits)
        if trial % 5 == 0:
            logits[:, :vocab // 3] = -np.inf
        cases.append((logits, float(rng.uniform(0.05, 0.99))))
    padded = np.concatenate([np.pad(logits, ((0, 0), (0, width - logits.shape[1])), constant_values=-np.inf)
                             for logits, _ in cases])
    top_p = np.repeat([top_p for _, top_p in cases], 4)[:, None].astype(np.float32)
    threshold = np.asarray(jax.jit(nucleus_threshold)(jnp.asarray(padded), jnp.asarray(top_p)))
    for trial, (logits, case_top_p) in enumerate(cases):
        kept = padded[4 * trial:4 * trial + 4, :logits.shape[1]] >= threshold[4 * trial:4 * trial + 4]
        np.testing.assert_array_equal(kept, _nucleus_float64(logits, case_top_p), err_msg=f"trial {trial}")
    # filter_logits keeps exactly the nucleus, as -inf elsewhere.
    logits, case_top_p = cases[1]
    filtered = np.asarray(filter_logits(jnp.asarray(logits), 0, case_top_p))
    np.testing.assert_array_equal(np.isfinite(filtered), _nucleus_float64(logits, case_top_p))
    np.testing.assert_array_equal(filtered[np.isfinite(filtered)], logits[np.isfinite(filtered)])


def _inverse_cdf_float64(logits: np.ndarray, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The index where each row's float64 CDF first exceeds u * total, and how far u * total lies from the
    nearest CDF step (a float32 search may resolve a tie within rounding either way)."""
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(weights, axis=1)
    target = uniforms * cdf[:, -1]
    index = np.array([np.searchsorted(row, value, side="right") for row, value in zip(cdf, target)])
    margin = np.min(np.abs(cdf - target[:, None]), axis=1) / cdf[:, -1]
    return index, margin


def test_cdf_sampling_inverts_the_float64_cdf_and_never_draws_excluded_tokens():
    rng = np.random.default_rng(0)
    vocab = 2 * CDF_BLOCK + 89  # three blocks, the last one partly padding
    logits = rng.normal(0, 3, (512, vocab))
    logits[:, rng.random(vocab) < 0.3] = -np.inf  # excluded (top-k / top-p) tokens
    logits[:4, :] = -np.inf
    logits[0, 5], logits[1, vocab - 1], logits[2, CDF_BLOCK] = 0.0, 0.0, 0.0  # one token left
    logits[3, [CDF_BLOCK - 1, CDF_BLOCK]] = 0.0  # two tokens at a block edge
    uniforms = rng.random(512)
    uniforms[:8] = [0.0, 1 - 2**-24, 0.5, 0.4999, 0.0, 1 - 2**-24, 0.0, 1 - 2**-24]
    drawn = np.asarray(categorical_by_cdf(jnp.asarray(logits, jnp.float32), jnp.asarray(uniforms, jnp.float32)))
    expected, margin = _inverse_cdf_float64(logits, uniforms)
    assert np.all(np.isfinite(logits[np.arange(512), drawn])), "an excluded token was drawn"
    assert drawn[:4].tolist() == [5, vocab - 1, CDF_BLOCK, CDF_BLOCK - 1]
    clear = margin > 1e-5  # float32 sums resolve the search away from a step
    assert clear.sum() > 450
    np.testing.assert_array_equal(drawn[clear], expected[clear])


def test_sampled_token_frequencies_follow_the_softmax():
    """10,000 draws of one row: each token's count within 4.5 binomial standard deviations of n * p."""
    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    draws = 10_000
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (draws, probs.size))
    tokens = np.asarray(sample_token(logits, jax.random.key(3), SamplingParams(max_new_tokens=1, temperature=1.0)))
    counts = np.bincount(tokens, minlength=probs.size)
    np.testing.assert_array_less(np.abs(counts - draws * probs), 4.5 * np.sqrt(draws * probs * (1 - probs)))


def test_top_k_one_is_greedy(setup):
    params, tokens, mask, stops = setup
    greedy = generate_jit(params, tokens, mask, stops, jax.random.key(1), cfg=CFG,
                          sampling=SamplingParams(max_new_tokens=8, temperature=0.0))
    top1 = generate_jit(params, tokens, mask, stops, jax.random.key(9), cfg=CFG,
                        sampling=SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1))
    np.testing.assert_array_equal(greedy.tokens, top1.tokens)


def test_a_group_shares_its_prompts_prefill(setup):
    """G completions of each prompt from one prefill per prompt are the completions of G prefilled copies:
    the same tokens (the same random bits draw from logits equal to float rounding), and log-probs that still
    equal a full forward pass."""
    params, tokens, mask, stops = setup
    group = 3
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0)
    shared = generate_jit(params, tokens, mask, np.repeat(stops, group, axis=0), jax.random.key(5), cfg=CFG,
                          sampling=sampling, group_size=group)
    copies = generate_jit(params, np.repeat(tokens, group, axis=0), np.repeat(mask, group, axis=0),
                          np.repeat(stops, group, axis=0), jax.random.key(5), cfg=CFG, sampling=sampling)
    np.testing.assert_array_equal(shared.prompt_tokens, copies.prompt_tokens)
    np.testing.assert_array_equal(shared.tokens, copies.tokens)
    np.testing.assert_array_equal(shared.completion_mask, copies.completion_mask)
    tolerance = summation_order_tolerance(shared.logprobs, 6 + 12)
    np.testing.assert_allclose(shared.logprobs, copies.logprobs, atol=tolerance)
    assert len({tuple(row) for row in np.asarray(shared.tokens)}) > tokens.shape[0]  # groups are not copies
    recomputed = completion_logprobs(params, shared.prompt_tokens, shared.prompt_mask, shared.tokens, CFG, 1.0)
    np.testing.assert_allclose(np.asarray(recomputed) * np.asarray(shared.completion_mask), shared.logprobs,
                               atol=tolerance)


def test_bfloat16_sampled_logprobs_equal_full_forward_logprobs(setup):
    """In bfloat16 compute the cached decode and the full forward pass may round differently. bfloat16 keeps 8
    significant bits (unit roundoff u = 2^-8); each layer's output carries O(u) relative error, so the logits
    (of magnitude up to about 4 here) differ by a few u times that, and a log-prob by about twice the logits'
    difference: atol 16 * u * 4 = 0.25 bounds it, while a wrong cache position or mask moves log-probs by O(1)."""
    params, tokens, mask, stops = setup
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    roll = generate_jit(params, tokens, mask, stops, jax.random.key(3), cfg=cfg,
                        sampling=SamplingParams(max_new_tokens=12, temperature=1.0))
    recomputed = completion_logprobs(params, roll.prompt_tokens, roll.prompt_mask, roll.tokens, cfg, 1.0)
    completion_mask = np.asarray(roll.completion_mask)
    assert completion_mask.sum() > 12
    np.testing.assert_allclose(np.asarray(recomputed) * completion_mask, roll.logprobs, atol=16 * 2.0**-8 * 4)
