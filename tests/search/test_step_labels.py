"""Math-Shepherd step labels on hand-built cases, and step prefixes that the compiled sampler continues exactly
as it continues the same prefix written out by hand."""

from __future__ import annotations

import jax
import numpy as np

from rlreason.config import ModelConfig
from rlreason.data.encoding import left_pad
from rlreason.models.transformer import init_params
from rlreason.sampling.sampler import SamplingParams, generate_groups
from rlreason.search.step_labels import label_steps, monte_carlo_step_labels, step_prefixes
from rlreason.search.steps import delimiter_table, split_steps
from rlreason.tokenizers import train_sentencepiece

IS_DELIMITER = np.array([False, True] + [False] * 30)  # token 1 ends a step
PAD = 0


def test_labels_are_the_hand_counted_fractions():
    # Completion 0 has 3 steps and is wrong; completion 1 has 2 steps and is right; S = 3, n = 4.
    verified = np.zeros((2, 3, 4), bool)
    verified[0, 0] = [True, True, False, False]  # 2 of 4
    verified[0, 1] = [False, False, False, True]  # 1 of 4
    verified[0, 2] = [True] * 4  # the last step: the completion's own verdict (wrong) decides, not these
    verified[1, 0] = [False] * 4  # 0 of 4
    verified[1, 1:] = True  # past the end / last step: ignored
    labels = label_steps(verified, np.array([3, 2]), np.array([False, True]))
    np.testing.assert_array_equal(np.asarray(labels.soft[0]), [0.5, 0.25, 0.0])
    np.testing.assert_array_equal(np.asarray(labels.soft[1, :2]), [0.0, 1.0])
    assert np.isnan(labels.soft[1, 2])
    assert labels.hard.tolist() == [[True, True, False], [False, True, False]]
    assert labels.valid.tolist() == [[True, True, True], [True, True, False]]


def test_prefixes_hold_the_prompt_and_the_first_steps_left_padded():
    prompt = np.array([[PAD, 7, 8], [9, 10, 11]])
    prompt_mask = prompt != PAD
    completion = np.array([[12, 1, 13, 14, 1, 15], [16, 17, 1, 18, PAD, PAD]])
    completion_mask = np.array([[True] * 6, [True] * 4 + [False] * 2])
    steps = split_steps(completion, completion_mask, IS_DELIMITER)
    tokens, mask = jax.jit(step_prefixes, static_argnums=4)(prompt, prompt_mask, completion, steps, 3)
    rows = [[int(t) for t, m in zip(tokens[r], mask[r]) if m] for r in range(6)]
    assert rows == [[7, 8, 12, 1], [7, 8, 12, 1, 13, 14, 1], [7, 8, 12, 1, 13, 14, 1, 15],
                    [9, 10, 11, 16, 17, 1], [9, 10, 11, 16, 17, 1, 18], [9, 10, 11, 16, 17, 1, 18]]
    for r in range(6):  # left-padded: every pad before every real token
        assert np.all(np.diff(np.asarray(mask[r]).astype(int)) >= 0), r


def test_the_sampler_continues_each_prefix_as_it_continues_that_prefix_written_alone():
    cfg = ModelConfig(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                      intermediate_size=40, init_std=0.4)
    params = init_params(cfg, jax.random.key(0))
    prompt = np.array([[PAD, 7, 8]])
    completion = np.array([[12, 1, 13, 14, 1, 15]])
    steps = split_steps(completion, np.ones_like(completion, bool), IS_DELIMITER)
    tokens, mask = step_prefixes(prompt, prompt != PAD, completion, steps, 3)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=5)
    batched = generate_groups(params, tokens, mask, jax.random.key(1), cfg, greedy, 1, (31,), PAD)
    for row in range(3):
        alone_tokens, alone_mask = left_pad([int(t) for t, m in zip(tokens[row], mask[row]) if m], 12, PAD)
        alone = generate_groups(params, alone_tokens[None], alone_mask[None], jax.random.key(1), cfg, greedy, 1,
                                (31,), PAD)
        np.testing.assert_array_equal(np.asarray(batched.tokens[row]), np.asarray(alone.tokens[0]))


def test_monte_carlo_labels_count_the_verified_continuations_of_each_prefix():
    """On a random model with a trained tokenizer: each label is the share of verified texts among the
    continuations of its prefix, each prefix continued alone (its own key, its own padding) and decoded
    together with its first steps; the last step takes the completion's own verdict."""
    tokenizer = train_sentencepiece(["6+5=11, 8+7=15, so 151", "3+4=7, 2+2=4, so 47", "a sum, then"] * 20, 60)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=40, init_std=0.4)
    params = init_params(cfg, jax.random.key(0))
    table = delimiter_table(tokenizer, ",")
    prompt_ids = [tokenizer.encode("3+4="), tokenizer.encode("what is 6+5?")]
    width = max(map(len, prompt_ids))
    prompt, prompt_mask = map(np.stack, zip(*(left_pad(ids, width, tokenizer.pad_id) for ids in prompt_ids)))
    texts = ["7, 2+2=4, so 47", "11, 8+7=15, 1"]
    completion_ids = [tokenizer.encode(text) for text in texts]
    length = max(map(len, completion_ids))
    completion = np.array([ids + [tokenizer.pad_id] * (length - len(ids)) for ids in completion_ids])
    completion_mask = np.array([[t < len(ids) for t in range(length)] for ids in completion_ids])

    def verify(b: int, text: str) -> bool:  # random continuations: some pass, some fail
        return len(text) % 2 == b

    sampling = SamplingParams(temperature=1.0, max_new_tokens=6)
    rng, max_steps, n = jax.random.key(3), 4, 5
    steps, labels = monte_carlo_step_labels(params, cfg, tokenizer, prompt, prompt_mask, completion,
                                            completion_mask, table, verify, max_steps, n, sampling, rng)
    assert steps.count.tolist() == [3, 3]
    keys = jax.random.split(rng, 2 * max_steps)
    for b, ids in enumerate(completion_ids):
        pieces = tokenizer.decode(ids).split(",")
        assert labels.soft[b, 2] == float(verify(b, texts[b]))
        for k in range(2):
            first_steps = tokenizer.encode(",".join(pieces[:k + 1]) + ",")
            alone, alone_mask = left_pad(prompt_ids[b] + first_steps, width + length + 3, tokenizer.pad_id)
            rollout = generate_groups(params, alone[None], alone_mask[None], keys[b * max_steps + k][None], cfg,
                                      sampling, n, tokenizer.stop_ids, tokenizer.pad_id)
            count = sum(verify(b, tokenizer.decode(first_steps + [int(t) for t, m in zip(rollout.tokens[j],
                                                                                       rollout.completion_mask[j]) if m]))
                        for j in range(n))
            assert labels.soft[b, k] == count / n, (b, k)
        assert not labels.valid[b, 3]
    assert np.any((labels.soft > 0) & (labels.soft < 1)), "a case that tells fractions from all-or-nothing"
