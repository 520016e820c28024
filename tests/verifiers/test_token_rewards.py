"""Token-level `r1_format` and `exact_answer` in JAX: hand-computed cases, and agreement with the text versions
on the detokenized completions of the project's kind of sentencepiece tokenizer."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from rlreason.config import TOKEN_SCORED_REWARDS
from rlreason.verifiers.answers import exact_answer
from rlreason.verifiers.bridge import detokenize
from rlreason.verifiers.format import r1_format
from rlreason.verifiers.golds import encode_golds
from rlreason.verifiers.tokens import (TOKEN_REWARDS, exact_answer_tokens, format_reward_tokens, gold_answer_units,
                                       make_token_scorer, token_vocab)

from token_rows import padded_rows

# completion, r1_format, exact_answer against gold "42"
CASES = [
    ("<think> 12 + 30 = 42 </think> <answer> 42 </answer>", 1.0, 1.0),
    ("<think>a</think><answer>42</answer>", 1.0, 1.0),
    ("\n<think>x</think>\n<answer>\n0042\n</answer>\n", 1.0, 1.0),
    ("<think>t</think>\t<answer>  4 2 </answer>  ", 1.0, 0.0),
    ("<think>Let me compute 5 - 9.</think> <answer> -4 </answer>", 1.0, 0.0),  # " -" is one token
    ("<think>t</think><answer>-004</answer>", 1.0, 0.0),
    ("<think>t</think><answer>- 4</answer>", 1.0, 0.0),
    ("<think>t</think><answer>What  is\n it</answer>", 1.0, 0.0),  # " What" and " is" are single tokens
    ("<think>t</think><answer> What is it </answer>", 1.0, 0.0),
    ("<think>t</think><answer>Whatis it</answer>", 1.0, 0.0),
    ("<think>é ١٢٣ １２３</think><answer>١٢٣</answer>", 1.0, 0.0),  # byte-fallback pieces
    ("<think>t</think><answer>42\x00</answer>", 1.0, 0.0),
    ("<think>t</think><answer>42</answer> trailing", 0.0, 1.0),
    ("Sure <think>t</think><answer>42</answer>", 0.0, 1.0),
    ("<think>t</think> so <answer>42</answer>", 0.0, 1.0),
    ("<answer>42</answer><think>t</think>", 0.0, 1.0),
    ("<think><think>t</think></think><answer>42</answer>", 0.0, 1.0),
    ("<think>t</think><answer><answer>42</answer></answer>", 0.0, 0.0),
    ("<think>t</think></answer>42<answer>", 0.0, 0.0),
    ("<think>t</think><answer>42", 0.0, 0.0),
    ("", 0.0, 0.0),
    ("<think>t</think><answer></answer>", 1.0, 0.0),
    ("<think>t</think><answer>   </answer>", 1.0, 0.0),
    ("<think>t</think><answer>0</answer>", 1.0, 0.0),
    ("<think>t</think><answer>000</answer>", 1.0, 0.0),
    ("<think>t</think><answer>-0</answer>", 1.0, 0.0),
]
BYTE_PIECE_ANSWER = 10  # the CASES row whose answer the tokenizer writes in byte-fallback pieces
GOLDS = ["42", "0042", "-4", "4 2", "what is it", "What is it", "١٢٣", "0", "-0", "", " 42\n"]
COMPLETION_LENGTH = 48


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return token_vocab(tokenizer)


def test_cases_round_trip_through_the_tokenizer(tokenizer):
    for completion, _, _ in CASES:
        assert tokenizer.decode(tokenizer.encode(completion)) == completion


def test_format_tokens_hand_computed(tokenizer, vocab):
    ids, mask = padded_rows(tokenizer, [case[0] for case in CASES], COMPLETION_LENGTH, eos=True)
    np.testing.assert_array_equal(jax.jit(format_reward_tokens)(ids, mask, vocab), [case[1] for case in CASES])


def test_exact_answer_tokens_hand_computed(tokenizer, vocab):
    ids, mask = padded_rows(tokenizer, [case[0] for case in CASES], COMPLETION_LENGTH, eos=True)
    rewards = jax.jit(exact_answer_tokens)(ids, mask, gold_rows(["42"] * len(CASES)), vocab)
    np.testing.assert_array_equal(rewards, [case[2] for case in CASES])


def test_tokens_outside_the_mask_are_ignored(tokenizer, vocab):
    formatted = tokenizer.encode("<think>t</think><answer>42</answer>")
    junk = tokenizer.encode(" junk <answer>7</answer>")
    ids = np.array([formatted + [tokenizer.eos_id] + junk], np.int32)
    mask = np.arange(ids.shape[1])[None] <= len(formatted)
    format_rewards = jax.jit(format_reward_tokens)
    assert format_rewards(ids, mask, vocab)[0] == 1.0
    assert jax.jit(exact_answer_tokens)(ids, mask, gold_rows(["42"]), vocab)[0] == 1.0
    assert format_rewards(ids, np.ones_like(mask), vocab)[0] == 0.0


def test_token_and_text_versions_agree(tokenizer, vocab):
    completions = [case[0] for case in CASES]
    ids, mask = padded_rows(tokenizer, completions, COMPLETION_LENGTH, eos=True)
    # Ids past the tokenizer's vocabulary (a wider model head) inside the think block and inside an answer.
    out_of_vocab = tokenizer.vocab_size + 7
    ids[1, 1], ids[2, 4] = out_of_vocab, out_of_vocab
    rows = [(row, gold) for row in range(len(completions)) for gold in GOLDS]
    texts = [detokenize(tokenizer, ids[row], mask[row]) for row in range(len(completions))]
    assert "\ufffd" in texts[1] and "\ufffd" in texts[2]

    row_index = np.array([row for row, _ in rows])
    token_format = jax.jit(format_reward_tokens)(ids, mask, vocab)
    token_exact = jax.jit(exact_answer_tokens)(ids[row_index], mask[row_index], gold_rows([gold for _, gold in rows]),
                                               vocab)

    np.testing.assert_array_equal(token_format, [r1_format("", text, "", {}) for text in texts])
    text_exact = np.asarray([math.nan if value is None else value
                             for value in (exact_answer("", texts[row], gold, {}) for row, gold in rows)])
    # The documented exception: an answer spelled with byte-fallback pieces never matches on tokens.
    byte_pieces = np.asarray([row == BYTE_PIECE_ANSWER and gold == "١٢٣" for row, gold in rows])
    np.testing.assert_array_equal(token_exact[~byte_pieces], text_exact[~byte_pieces])
    np.testing.assert_array_equal(token_exact[byte_pieces], [0.0])
    assert text_exact[byte_pieces].tolist() == [1.0]
    assert 0 < np.nansum(token_exact) < len(rows)  # the set holds both matches and mismatches


def test_gold_answers_decode_from_their_json_rows():
    """Every UTF-8 width, each JSON escape (quote, backslash, control characters as \\uXXXX), whitespace
    that no tokenizer piece holds, metadata after the answer; an all-zero row holds no answer."""
    answers = ["42", "", 'say "hi"', "back\\slash/", "tab\tnew\nline\x01\x1f", "é€😀", "\u3000 x\u2028", "-0"]
    rows = np.concatenate([gold_rows(answers, {"quoted": '"}', "n": [1, 2]}), np.zeros((1, 96), np.uint8)])
    units, lengths = jax.jit(gold_answer_units)(rows)
    decoded = ["".join(map(chr, np.asarray(units[row, :lengths[row]]))) for row in range(len(rows))]
    assert decoded == answers + [""]


def test_token_scorer_matches_the_text_functions(tokenizer, vocab):
    """The step's pure-JAX scorer: one column per name in order, NaN on rows without a gold."""
    completions = [case[0] for case in CASES]
    ids, mask = padded_rows(tokenizer, completions, COMPLETION_LENGTH, eos=True)
    golds = gold_rows(["42"] * (len(CASES) - 1))
    golds = np.concatenate([golds, np.zeros_like(golds[:1])])
    score = jax.jit(make_token_scorer(tokenizer, ("exact_answer", "r1_format")))
    scores = np.asarray(score(ids, mask, ids, mask, golds))
    expected = np.asarray([[exact, form] for _, form, exact in CASES])
    expected[-1] = np.nan
    np.testing.assert_array_equal(scores, expected)


def test_token_scorer_refuses_functions_without_a_token_version(tokenizer):
    assert set(TOKEN_REWARDS) == set(TOKEN_SCORED_REWARDS)  # the config's list of what grpo.scoring=jax allows
    with pytest.raises(ValueError, match="no token-level version of gsm8k; those with one: r1_format, exact_answer"):
        make_token_scorer(tokenizer, ("r1_format", "gsm8k"))


def gold_rows(answers: list[str], metadata: dict | None = None) -> np.ndarray:
    return encode_golds([(answer, metadata or {}) for answer in answers], 96)
