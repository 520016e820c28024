"""The grain prompt stream: batch layout, per-process shards, a new order each epoch, resumable state."""

from __future__ import annotations

import json

import numpy as np
import orbax.checkpoint as ocp
import pytest
from dataset_files import task_config, write_jsonl

from rlreason.data.encoding import load_prompts
from rlreason.data.pipeline import checkpoint_restore_args, checkpoint_save_args, prompt_batches
from rlreason.verifiers.golds import decode_gold

MAX_PROMPT_LENGTH = 16


def _prompts(tmp_path, tokenizer, rows: int):
    """A PromptSet whose row i asks "What is i+3?" with gold str(i)."""
    file = write_jsonl(tmp_path / f"rows{rows}.jsonl", [{"question": f"What is {i}+3?", "answer": str(i)}
                                                         for i in range(rows)])
    task = task_config("task.name=jsonl", f"task.path={file}", "task.num_eval=0", "task.max_gold_bytes=64")
    return load_prompts(task, "train", task.num_train, tokenizer, "plain", MAX_PROMPT_LENGTH)


def _golds(batch) -> list[int]:
    return [int(decode_gold(row)[0]) for row in batch["gold_bytes"]]


def _take(batches, count: int) -> list[int]:
    """The gold numbers of the next `count` batches, in order."""
    return [gold for _ in range(count) for gold in _golds(next(batches))]


def test_a_batch_holds_left_padded_prompts_and_their_golds(tmp_path, tokenizer):
    prompts = _prompts(tmp_path, tokenizer, 6)
    batch = next(prompt_batches(prompts, batch_size=3, seed=0))
    assert {key: (value.shape, value.dtype) for key, value in batch.items()} == {
        "prompt_tokens": ((3, MAX_PROMPT_LENGTH), np.int32), "prompt_mask": ((3, MAX_PROMPT_LENGTH), np.int32),
        "gold_bytes": ((3, 64), np.uint8)}
    for tokens, mask, gold in zip(batch["prompt_tokens"], batch["prompt_mask"], _golds(batch)):
        length = int(mask.sum())
        assert mask.tolist() == [0] * (MAX_PROMPT_LENGTH - length) + [1] * length
        assert (tokens[:MAX_PROMPT_LENGTH - length] == tokenizer.pad_id).all()
        assert tokenizer.decode(tokens[mask > 0].tolist()) == f"What is {gold}+3?"


def test_processes_keep_their_rows_of_the_same_global_batches(tmp_path, tokenizer):
    prompts = _prompts(tmp_path, tokenizer, 24)
    whole = _take(prompt_batches(prompts, 4, seed=1), 6)
    halves = [_take(prompt_batches(prompts, 4, seed=1, rows=rows), 6) for rows in (slice(0, 2), slice(2, 4))]
    # Batch k of the single process is rows 0-1 of process 0's batch k, then rows 0-1 of process 1's.
    assert whole == [gold for batch in range(6) for half in halves for gold in half[2 * batch:2 * batch + 2]]
    with pytest.raises(ValueError, match="rows 2:6 are not inside a batch of 4 rows"):
        prompt_batches(prompts, 4, seed=1, rows=slice(2, 6))


def test_each_epoch_is_a_new_permutation_and_batches_run_across_epochs(tmp_path, tokenizer):
    prompts = _prompts(tmp_path, tokenizer, 10)
    golds = _take(prompt_batches(prompts, 4, seed=3), 10)  # 40 rows: four epochs of 10, batches straddle them
    epochs = [golds[start:start + 10] for start in range(0, 40, 10)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 4
    assert _take(prompt_batches(prompts, 4, seed=3), 10) == golds
    assert _take(prompt_batches(prompts, 4, seed=4), 10) != golds


def test_state_round_trip_continues_with_the_same_batches(tmp_path, tokenizer):
    prompts = _prompts(tmp_path, tokenizer, 10)
    batches = prompt_batches(prompts, 4, seed=2)
    _take(batches, 4)  # past the first epoch boundary
    state = json.loads(json.dumps(batches.get_state()))
    expected = _take(batches, 6)
    resumed = prompt_batches(prompts, 4, seed=2)
    resumed.set_state(state)
    assert _take(resumed, 6) == expected


def test_state_of_another_stream_is_refused(tmp_path, tokenizer):
    prompts = _prompts(tmp_path, tokenizer, 10)
    state = prompt_batches(prompts, 4, seed=2).get_state()
    with pytest.raises(ValueError, match=r"batch_size 4 -> 5 \(train.batch_size\)"):
        prompt_batches(prompts, 5, seed=2).set_state(state)
    with pytest.raises(ValueError, match=r"rows 10 -> 11 \(the data \(task.\*, or sft.\*\)\); digest '.*' -> '.*'"):
        prompt_batches(_prompts(tmp_path, tokenizer, 11), 4, seed=2).set_state(state)


def test_orbax_checkpoint_restores_the_position(tmp_path, tokenizer):
    prompts = _prompts(tmp_path, tokenizer, 10)
    batches = prompt_batches(prompts, 4, seed=5)
    _take(batches, 3)
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        manager.save(3, args=ocp.args.Composite(data=checkpoint_save_args(batches)))
        manager.wait_until_finished()
    expected = _take(batches, 5)
    resumed = prompt_batches(prompts, 4, seed=5)
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        manager.restore(3, args=ocp.args.Composite(data=checkpoint_restore_args(resumed)))
    assert _take(resumed, 5) == expected


def test_one_prompt_per_batch_streams_every_epoch(tmp_path, tokenizer):
    """train.batch_size=1: grain's length of an endless stream batched by one used to overflow."""
    prompts = _prompts(tmp_path, tokenizer, 8)
    golds = _take(prompt_batches(prompts, 1, seed=0), 16)
    assert sorted(golds[:8]) == sorted(golds[8:]) == list(range(8))
