"""One process's endless, checkpointable stream of prompt batches, through grain.

From a `PromptSet` of N rows, for process i of K:
  1. shard: rows i, i + K, i + 2K, ... of the first K * (N // K) rows. The last N % K rows (fewer than K) are
     left out, so that every shard holds N // K rows: all processes pass epoch boundaries at the same batch
     and each prompt is seen equally often.
  2. shuffle with `seed`, then 3. repeat without end: a new permutation of the shard every epoch (shuffling
     after repeating would mix epochs, so a prompt could come twice before another came once).
  4. batch P = `batch_size` prompts. The stream is endless, so no batch is dropped or short: batches run
     across epoch boundaries, and every process yields a batch at every step.
A batch holds P whole prompts; the step samples each one G = grpo.num_generations times, so GRPO groups are
complete by construction and never split across batches, steps or processes.

Resuming: `batches.get_state()` is a small JSON-able dict and `batches.set_state(state)` continues with exactly
the batches that would have come next. For orbax, put `checkpoint_save_args(batches)` /
`checkpoint_restore_args(batches)` into `ocp.args.Composite` (one file per process). The state also records
which stream it belongs to, and restoring it into a different one (other data, batch size, seed or process
layout) raises instead of silently continuing elsewhere.
"""

from __future__ import annotations

import hashlib

import grain
import grain.checkpoint
import numpy as np

from rlreason.data.encoding import ROW_KEYS, PromptSet

# What each entry of a stream's identity follows from, for the error raised on a mismatch.
STREAM_SOURCES = {"rows": "the task's data (task.*)", "digest": "the encoded prompts (task.*, tokenizer.*, "
                  "sampling.max_prompt_length)", "batch_size": "train.batch_size", "seed": "train.seed",
                  "process_index": "the process's index", "process_count": "the number of processes"}


class PromptBatches(grain.DatasetIterator):
    """An endless iterator of batches: prompt_tokens int32 [P, Tp], prompt_mask int32 [P, Tp],
    gold_bytes uint8 [P, Lg]. Its state is {"stream": identity, "position": grain's state}."""

    def __init__(self, batches: grain.DatasetIterator, stream: dict):
        super().__init__(batches)
        self._stream = stream

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict:
        return {"stream": dict(self._stream), "position": self._parent.get_state()}

    def set_state(self, state: dict) -> None:
        saved = state["stream"]
        if saved != self._stream:
            changes = [f"{key} {saved.get(key)!r} -> {value!r} ({STREAM_SOURCES[key]})"
                       for key, value in self._stream.items() if saved.get(key) != value]
            raise ValueError("the data-iterator state was saved for another prompt stream: " + "; ".join(changes)
                             + ". Resume with the settings it was saved with, or do not restore the data state "
                             "(the stream then starts from its first batch)")
        self._parent.set_state(state["position"])


def _digest(prompts: PromptSet) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for key in ROW_KEYS:
        digest.update(np.ascontiguousarray(getattr(prompts, key)))
    return digest.hexdigest()


def prompt_batches(prompts: PromptSet, batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1) -> PromptBatches:
    """This process's endless stream of `batch_size`-prompt batches (see the module docstring)."""
    shard_rows = len(prompts) // process_count
    if shard_rows == 0:
        raise ValueError(f"{len(prompts)} prompts cannot be shared among {process_count} processes: each needs one")
    dataset = (grain.MapDataset.source(prompts)[process_index:shard_rows * process_count:process_count]
               .shuffle(seed=seed)
               .repeat(None)
               .batch(batch_size))
    stream = {"rows": len(prompts), "digest": _digest(prompts), "batch_size": batch_size, "seed": seed,
              "process_index": process_index, "process_count": process_count}
    # The rows are arrays in memory already: reading threads would only contend for the GIL (grain's advice).
    in_memory = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return PromptBatches(iter(dataset.to_iter_dataset(in_memory)), stream)


def checkpoint_save_args(batches: PromptBatches) -> grain.checkpoint.CheckpointSave:
    """orbax args (an item of `ocp.args.Composite`) saving where `batches` is; each process writes its own."""
    return grain.checkpoint.CheckpointSave(batches)


def checkpoint_restore_args(batches: PromptBatches) -> grain.checkpoint.CheckpointRestore:
    """orbax args moving `batches`, built as at saving time, to the saved position (in place)."""
    return grain.checkpoint.CheckpointRestore(batches)
