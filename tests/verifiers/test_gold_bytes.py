"""Gold answers as zero-padded UTF-8 JSON rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlreason.verifiers import decode_gold, encode_golds


def test_rows_round_trip_and_are_zero_padded():
    golds = [("132", {}), ("x\0y ١٢٣ é", {"numbers": [3, 5], "target": 8}), ("", {"note": "quote \" and \\"})]
    encoded = encode_golds(golds, max_bytes=80)
    assert encoded.dtype == np.uint8 and encoded.shape == (3, 80)
    assert [decode_gold(row) for row in encoded] == golds
    first = bytes(encoded[0]).rstrip(b"\0")
    assert json.loads(first) == {"answer": "132", "metadata": {}}
    assert not encoded[0, len(first):].any()
    assert b"\0" not in bytes(encoded[1]).rstrip(b"\0")  # JSON escapes the NUL inside the answer


def test_an_all_zero_row_has_no_gold():
    assert decode_gold(np.zeros(16, np.uint8)) is None


def test_a_row_that_does_not_fit_is_named():
    with pytest.raises(ValueError, match=r"gold row 1 needs 38 bytes as JSON but rows hold max_bytes=37"):
        encode_golds([("1", {}), ("1" * 11, {}), ("1" * 500, {})], max_bytes=37)


def test_a_row_exactly_as_wide_as_the_json_fits():
    [row] = encode_golds([("1" * 11, {})], max_bytes=38)
    assert decode_gold(row) == ("1" * 11, {})


@pytest.mark.parametrize("gold", [(132, {}), ("132", None), ("132", {"numbers": np.arange(2)})])
def test_rows_must_be_a_string_and_json_metadata(gold):
    with pytest.raises(TypeError, match="gold row 0"):
        encode_golds([gold], max_bytes=64)
