"""Step segmentation against a plain-Python reading of the rule in rlreason/search/steps.py, on hand-made token
rows and on a trained sentencepiece tokenizer's pieces."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rlreason.search.steps import delimiter_table, split_steps
from rlreason.tokenizers import train_sentencepiece

# Toy vocabulary: 0 pad, 1 "\n", 2 "\n\n", 3.. words.
NEWLINE, BLANK_LINE = 1, 2
IS_DELIMITER = np.array([False, True, True] + [False] * 7)


def reference_steps(tokens: list[int], mask: list[bool]) -> list[list[int]]:
    """The positions of each step, written from the rule: a step takes tokens up to the end of a delimiter run
    or of the completion, and a step with no content token merges into the next."""
    steps, current, has_content = [], [], False
    positions = [t for t, inside in enumerate(mask) if inside]
    for i, t in enumerate(positions):
        current.append(t)
        is_delimiter = IS_DELIMITER[tokens[t]]
        has_content |= not is_delimiter
        run_ends = is_delimiter and (i + 1 == len(positions) or not IS_DELIMITER[tokens[positions[i + 1]]])
        if (run_ends or i + 1 == len(positions)) and has_content:
            steps.append(current)
            current, has_content = [], False
    return steps


CASES = {
    "three steps": ([3, 4, 1, 5, 1, 6], [True] * 6),
    "a blank line is one delimiter run": ([3, 1, 1, 4, 2, 5, 6], [True] * 7),
    "no delimiter": ([3, 4, 5, 0, 0, 0], [True] * 3 + [False] * 3),
    "opens with a newline": ([1, 2, 3, 4, 1, 5, 0], [True] * 6 + [False]),
    "ends on a delimiter run": ([3, 1, 4, 1, 1, 0, 0], [True] * 5 + [False] * 2),
    "delimiters alone": ([1, 1, 2, 0, 0, 0, 0], [True] * 3 + [False] * 4),
    "empty": ([0, 0, 0, 0], [False] * 4),
    "left of the completion is the prompt": ([7, 1, 3, 1, 4, 0], [False, False, True, True, True, False]),
}


@pytest.mark.parametrize("name", CASES)
def test_steps_follow_the_rule(name):
    tokens, mask = CASES[name]
    steps = jax.jit(split_steps)(np.array([tokens]), np.array([mask]), IS_DELIMITER)
    expected = reference_steps(tokens, mask)
    assert int(steps.count[0]) == len(expected)
    want_step_of = np.full(len(tokens), -1)
    want_ends = np.zeros(len(tokens), bool)
    for index, positions in enumerate(expected):
        want_step_of[positions] = index
        want_ends[positions[-1]] = True
    np.testing.assert_array_equal(np.asarray(steps.step_of[0]), want_step_of)
    np.testing.assert_array_equal(np.asarray(steps.ends[0]), want_ends)


def test_hand_counted_case():
    # "a b \n c \n\n d": steps [a b \n] [c \n\n] [d]
    steps = split_steps(np.array([[3, 4, 1, 5, 2, 6]]), np.ones((1, 6), bool), IS_DELIMITER)
    assert steps.step_of.tolist() == [[0, 0, 0, 1, 1, 2]]
    assert steps.ends.tolist() == [[False, False, True, False, True, True]]
    assert steps.count.tolist() == [3]


def test_rows_are_split_independently():
    tokens = np.array([CASES[name][0][:6] for name in ("three steps", "opens with a newline")])
    mask = np.array([CASES[name][1][:6] for name in ("three steps", "opens with a newline")])
    batch = split_steps(tokens, mask, IS_DELIMITER)
    for row in range(2):
        alone = split_steps(tokens[row:row + 1], mask[row:row + 1], IS_DELIMITER)
        np.testing.assert_array_equal(np.asarray(batch.step_of[row]), np.asarray(alone.step_of[0]))


def test_a_tokenizers_pieces_split_where_the_text_does():
    lines = ["6+5=11, 8+7=15, so 151", "3+4=7, 2+2=4, so 47", "what is the sum, then"] * 20
    tokenizer = train_sentencepiece(lines, vocab_size=60)
    table = delimiter_table(tokenizer, ",")
    assert not any(table[token] for token in (tokenizer.pad_id, tokenizer.eos_id))
    text = "6+5=11, 8+7=15, so 151"
    ids = tokenizer.encode(text)
    steps = split_steps(np.array([ids]), np.ones((1, len(ids)), bool), table)
    pieces = [tokenizer.decode([ids[t] for t in range(len(ids)) if steps.step_of[0, t] == k])
              for k in range(int(steps.count[0]))]
    assert pieces == ["6+5=11,", " 8+7=15,", " so 151"]
    with pytest.raises(ValueError, match="non-empty"):
        delimiter_table(tokenizer, "")
