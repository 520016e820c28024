"""Step-level beam search: with one beam, one expansion and greedy steps it is greedy decoding; with more beams
it keeps what the scorer prefers; problems searched together equal each searched alone, and the token count is
what the sampler generated."""

from __future__ import annotations

import jax
import numpy as np

from rlreason.config import ModelConfig
from rlreason.data.encoding import left_pad
from rlreason.models.transformer import init_params
from rlreason.sampling.sampler import SamplingParams, generate_groups
from rlreason.search.beam import beam_search
from rlreason.search.steps import delimiter_table
from rlreason.tokenizers import train_sentencepiece

TOKENIZER = train_sentencepiece(["6+5=11, 8+7=15, so 151", "3+4=7, 2+2=4, so 47", "a sum, then"] * 20, 60)
CFG = ModelConfig(vocab_size=TOKENIZER.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, intermediate_size=40, init_std=0.4)
PARAMS = init_params(CFG, jax.random.key(0))
TABLE = delimiter_table(TOKENIZER, ",")
PROMPT = TOKENIZER.encode("what is 6+5?")


def greedy_completion(max_new_tokens: int) -> list[int]:
    tokens, mask = left_pad(PROMPT, len(PROMPT), TOKENIZER.pad_id)
    plain = generate_groups(PARAMS, tokens[None], mask[None], jax.random.key(0), CFG,
                            SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens), 1, TOKENIZER.stop_ids,
                            TOKENIZER.pad_id)
    return np.asarray(plain.tokens[0])[np.asarray(plain.completion_mask[0]).astype(bool)].tolist()


def test_one_greedy_beam_is_greedy_decoding():
    want = greedy_completion(30)  # the search makes at most 6 steps of at most 5 tokens
    # The random model writes no ",": let its third token end steps, so that steps end at delimiters and at
    # the step length both.
    table = np.zeros(TOKENIZER.vocab_size, bool)
    table[want[2]] = True
    result, = beam_search(PARAMS, CFG, TOKENIZER, [PROMPT], lambda tokens, mask: np.zeros(len(tokens)), table,
                          beam=1, expand=1, max_steps=6, max_step_tokens=5,
                          sampling=SamplingParams(temperature=0.0, max_new_tokens=0), keys=jax.random.key(0)[None])
    found = result.completion
    assert found == want[:len(found)] and len(found) >= 8, (found, want)
    assert result.tokens_generated == len(found)  # one beam, one expansion: every sampled token is kept


def test_the_scorer_decides_which_beams_survive():
    """With a scorer that counts a token, the search returns a completion holding more of it than plain samples."""
    target = TOKENIZER.encode("1")[-1]

    def count_target(tokens, mask):
        return np.sum((tokens == target) & mask.astype(bool), axis=1).astype(float)

    sampling = SamplingParams(temperature=1.0, max_new_tokens=0)
    found = beam_search(PARAMS, CFG, TOKENIZER, [PROMPT], count_target, TABLE, beam=4, expand=4, max_steps=3,
                        max_step_tokens=5, sampling=sampling, keys=jax.random.key(2)[None])[0].completion
    tokens, mask = left_pad(PROMPT, len(PROMPT), TOKENIZER.pad_id)
    plain = generate_groups(PARAMS, tokens[None], mask[None], jax.random.key(2), CFG,
                            SamplingParams(temperature=1.0, max_new_tokens=15), 16, TOKENIZER.stop_ids,
                            TOKENIZER.pad_id)
    plain_counts = np.sum((np.asarray(plain.tokens) == target) & np.asarray(plain.completion_mask).astype(bool), 1)
    assert found.count(target) > np.mean(plain_counts), (found.count(target), plain_counts)


def test_a_problem_searched_in_a_batch_does_not_depend_on_the_others():
    """Three problems, then the same three in reverse order with their keys: each problem's search is the same."""
    prompts = [PROMPT, TOKENIZER.encode("what is 3+4?"), TOKENIZER.encode("a sum")]
    keys = jax.random.split(jax.random.key(5), 3)

    def score(tokens, mask):  # prefers rows ending in a low token id: arbitrary, but it makes beams compete
        return -tokens[:, -1].astype(float)

    settings = dict(beam=2, expand=3, max_steps=3, max_step_tokens=4, sampling=SamplingParams(temperature=1.0, max_new_tokens=0))
    forward = beam_search(PARAMS, CFG, TOKENIZER, prompts, score, TABLE, keys=keys, **settings)
    backward = beam_search(PARAMS, CFG, TOKENIZER, prompts[::-1], score, TABLE, keys=keys[::-1], **settings)
    assert forward == backward[::-1]
    assert len({tuple(result.completion) for result in forward}) > 1
    # Cost: at most 4 tokens for each of 3 samples of 1 beam, then of 2 beams, twice.
    assert all(0 < result.tokens_generated <= (3 + 6 + 6) * 4 for result in forward)
