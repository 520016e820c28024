"""One process's endless, checkpointable stream of row batches, through grain: GRPO's prompt rows, SFT's
token rows.

From a source of N rows (a `PromptSet`, an `SFTRows`), every process builds the same global stream:
  1. shuffle with `seed`, then 2. repeat without end: a new permutation every epoch (shuffling after
     repeating would mix epochs, so a prompt could come twice before another came once).
  3. batch P = `batch_size` prompts (the GLOBAL batch). The stream is endless, so no batch is dropped or short:
     batches run across epoch boundaries.
  4. keep `rows`, this process's rows of each global batch (`rlreason.parallel.host_data.process_rows`).
Because every process walks the same global order and keeps only its block of rows, the global batch that the
processes assemble together is the one a single process would draw: results do not depend on the number of
hosts. A batch holds whole prompts; the step samples each one G = grpo.num_generations times, so GRPO groups
are complete by construction.

Resuming: `batches.get_state()` is a small JSON-able dict and `batches.set_state(state)` continues with exactly
the batches that would have come next. For orbax, put `checkpoint_save_args(batches)` /
`checkpoint_restore_args(batches)` into `ocp.args.Composite` (one file per process). The state also records
which stream it belongs to, and restoring it into a different one (other data, batch size, seed or row block)
raises instead of silently continuing elsewhere.
"""

from __future__ import annotations

import hashlib

import grain
import grain.checkpoint
import numpy as np

from rlreason.data.encoding import ROW_KEYS, PromptSet

# What each entry of a stream's identity follows from, for the error raised on a mismatch.
STREAM_SOURCES = {"rows": "the data (task.*, or sft.*)", "digest": "the encoded rows (task.*, tokenizer.*, "
                  "sampling.max_prompt_length; for SFT sft.*)", "batch_size": "train.batch_size", "seed": "train.seed",
                  "process_rows": "this process's rows of each batch (the mesh and the number of processes)"}


class RowBatches(grain.DatasetIterator):
    """An endless iterator of batches: a dict of the source's row keys, each [P, ...] (prompt rows:
    prompt_tokens int32 [P, Tp], prompt_mask int32 [P, Tp], gold_bytes uint8 [P, Lg]). Its state is
    {"stream": identity, "position": grain's state}."""

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
            raise ValueError("the data-iterator state was saved for another data stream: " + "; ".join(changes)
                             + ". Resume with the settings it was saved with, or do not restore the data state "
                             "(the stream then starts from its first batch)")
        self._parent.set_state(state["position"])


ENDLESS_ROWS = 2**62  # rows the stream walks before it ends


def _digest(source, keys: tuple[str, ...]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for key in keys:
        digest.update(np.ascontiguousarray(getattr(source, key)))
    return digest.hexdigest()


def row_batches(source, keys: tuple[str, ...], batch_size: int, seed: int, rows: slice | None = None) -> RowBatches:
    """This process's endless stream: `rows` of each `batch_size`-row global batch (all rows when None).
    `source` has `len`, `source[i]` (row i as a dict of `keys`) and each key as an [N, ...] array attribute."""
    rows = slice(0, batch_size) if rows is None else rows
    if not 0 <= rows.start < rows.stop <= batch_size:
        raise ValueError(f"rows {rows.start}:{rows.stop} are not inside a batch of {batch_size} rows")
    dataset = (grain.MapDataset.source(source)
               .shuffle(seed=seed)
               # Endless in practice; a finite count because grain's length of an infinite stream batched by
               # one row overflows (train.batch_size=1 crashed).
               .repeat(ENDLESS_ROWS // max(len(source), 1))
               .batch(batch_size)
               .map(lambda batch: {key: values[rows] for key, values in batch.items()}))
    stream = {"rows": len(source), "digest": _digest(source, keys), "batch_size": batch_size, "seed": seed,
              "process_rows": [rows.start, rows.stop]}
    return RowBatches(iter(dataset.to_iter_dataset()), stream)


def prompt_batches(prompts: PromptSet, batch_size: int, seed: int, rows: slice | None = None) -> RowBatches:
    """GRPO's stream of prompt batches (`row_batches` of a PromptSet's rows)."""
    return row_batches(prompts, ROW_KEYS, batch_size, seed, rows)


def checkpoint_save_args(batches: RowBatches) -> grain.checkpoint.CheckpointSave:
    """orbax args (an item of `ocp.args.Composite`) saving where `batches` is; each process writes its own."""
    return grain.checkpoint.CheckpointSave(batches)


def checkpoint_restore_args(batches: RowBatches) -> grain.checkpoint.CheckpointRestore:
    """orbax args moving `batches`, built as at saving time, to the saved position (in place)."""
    return grain.checkpoint.CheckpointRestore(batches)
