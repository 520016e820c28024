"""Prompt rows cut to the width their longest prompt needs (sampling.prompt_bucket), on one process; the
multi-process agreement on the width is part of tests/parallel/test_multihost_training.py."""

from __future__ import annotations

import numpy as np
import pytest

from rlreason.parallel.host_data import trim_prompt_padding

# Left-padded prompts of 2, 3 and 1 tokens in 6 slots, and each row's gold answer.
TOKENS = np.array([[0, 0, 0, 0, 5, 6], [0, 0, 0, 7, 8, 9], [0, 0, 0, 0, 0, 4]], np.int32)
ROWS = {"prompt_tokens": TOKENS, "prompt_mask": (TOKENS > 0).astype(np.int32),
        "gold_bytes": np.array([[49], [50], [51]], np.uint8)}


@pytest.mark.parametrize("multiple, width", [(1, 3), (2, 4), (4, 4), (5, 5), (8, 6)])
def test_left_padding_is_cut_to_the_longest_prompt_rounded_up(multiple, width):
    """The longest prompt has 3 tokens: the rows keep its multiple of `multiple`, never more than they had, and
    every prompt token stays in place at the right end."""
    trimmed = trim_prompt_padding(ROWS, multiple)
    np.testing.assert_array_equal(trimmed["prompt_tokens"], TOKENS[:, 6 - width:])
    np.testing.assert_array_equal(trimmed["prompt_mask"], ROWS["prompt_mask"][:, 6 - width:])
    assert trimmed["prompt_mask"].sum() == ROWS["prompt_mask"].sum()
    np.testing.assert_array_equal(trimmed["gold_bytes"], ROWS["gold_bytes"])
