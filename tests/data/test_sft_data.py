"""SFT rows: the loss mask covers a response and its EOS only, first-fit packing puts each example where the
hand-worked placement says, and bad rows are reported with their file and line."""

from __future__ import annotations

import numpy as np
import pytest
from dataset_files import write_jsonl

from rlreason.config import ConfigError, load_config
from rlreason.data.bad_rows import BadRowsError
from rlreason.data.sft import SFTExample, encode_sft_example, load_sft_rows, pack
from rlreason.tokenizers.templates import render_prompt


def test_the_loss_mask_covers_the_response_and_eos(tokenizer):
    example = SFTExample("What is 3+7?", " <answer>10</answer>", "f.jsonl:1")
    ids, mask = encode_sft_example(example, tokenizer, "r1_short", seq_len=200)
    prompt_ids = tokenizer.encode(render_prompt("What is 3+7?", "r1_short"))
    assert ids[:len(prompt_ids)] == prompt_ids and mask[:len(prompt_ids)] == [0] * len(prompt_ids)
    trained = [token for token, on in zip(ids, mask) if on]
    assert trained == tokenizer.encode(" <answer>10</answer>") + [tokenizer.eos_id]
    assert ids[-1] == tokenizer.eos_id


def test_first_fit_packing_by_hand():
    # Lengths 6, 5, 4, 3 into rows of 10: 6 opens row 0, 5 row 1, 4 fills row 0, 3 joins row 1.
    sequences = [([length * 10 + i for i in range(length)], [0] * (length - 2) + [1, 1]) for length in (6, 5, 4, 3)]
    rows = pack(sequences, seq_len=10, pad_id=0, packing=True)
    np.testing.assert_array_equal(rows["tokens"], [[60, 61, 62, 63, 64, 65, 40, 41, 42, 43],
                                                   [50, 51, 52, 53, 54, 30, 31, 32, 0, 0]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1] * 6 + [2] * 4, [1] * 5 + [2] * 3 + [0, 0]])
    np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 1, 2, 0, 0]])
    np.testing.assert_array_equal(rows["loss_mask"], [[0, 0, 0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0, 1, 1, 0, 0]])


def test_without_packing_each_example_has_a_row():
    sequences = [([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1])]
    rows = pack(sequences, seq_len=4, pad_id=9, packing=False)
    np.testing.assert_array_equal(rows["tokens"], [[1, 2, 3, 9], [4, 5, 9, 9]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 0], [1, 1, 0, 0]])


def sft_config(path, *overrides):
    return load_config(overrides=[f"sft.path={path}", "tokenizer.template=r1_short", *overrides])


def test_rows_load_every_example_once(tmp_path, tokenizer):
    rows = [{"prompt": f"What is {a}+3?", "response": f" <answer>{a + 3}</answer>"} for a in range(12)]
    packed = load_sft_rows(sft_config(write_jsonl(tmp_path / "sft.jsonl", rows), "sft.seq_len=64"), tokenizer)
    assert packed.num_examples == 12 and packed.skipped_rows == 0
    assert packed.tokens.shape[1] == 64 and len(packed) < 12  # several examples a row
    responses = []
    for row in range(len(packed)):
        for segment in range(1, packed.segment_ids[row].max() + 1):
            here = (packed.segment_ids[row] == segment) & (packed.loss_mask[row] > 0)
            responses.append(tokenizer.decode(packed.tokens[row][here].tolist()))
    assert sorted(responses) == sorted(tokenizer.decode(tokenizer.encode(row["response"])) for row in rows)


def test_bad_rows_name_their_line(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "What is 1+1?", "response": " 2"},
                                                 {"prompt": "What is 2+2?"},
                                                 {"prompt": "What is 3+3?", "response": 6},
                                                 {"prompt": "What is 4+4? " * 30, "response": " 8"}])
    with pytest.raises(BadRowsError) as error:
        load_sft_rows(sft_config(path, "sft.seq_len=48"), tokenizer)
    message = str(error.value)
    assert "3 malformed row(s)" in message
    assert f"{path}:2: field 'response' is missing" in message
    assert f"{path}:3: field 'response' holds 6 (int), not text" in message
    assert f"{path}:4: prompt and response are" in message and "sft.seq_len=48" in message
    skipped = load_sft_rows(sft_config(path, "sft.seq_len=48", "task.on_bad_row=skip"), tokenizer)
    assert skipped.num_examples == 1 and skipped.skipped_rows == 3


def test_an_empty_path_names_the_key(tokenizer):
    with pytest.raises(ConfigError, match="config key 'sft.path' is empty"):
        load_sft_rows(load_config(), tokenizer)
