"""The gold answers a batch carries into the compiled step: one zero-padded UTF-8 JSON object per row.

Row layout: `{"answer": str, "metadata": {...}}` as UTF-8 bytes, then zeros up to the row width. JSON escapes
every control character, so the encoded text never holds a NUL byte and the first zero ends it. An all-zero
row means "no gold" (e.g. a padding row): it is scored as not applicable by every function.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np


def encode_golds(golds: Sequence[tuple[str, dict]], max_bytes: int) -> np.ndarray:
    """uint8 [B, max_bytes] rows holding each (answer, metadata) pair; raises ValueError naming the first row
    that does not fit, and TypeError for a row that is not (str, JSON-serializable dict)."""
    encoded = np.zeros((len(golds), max_bytes), np.uint8)
    for row, (answer, metadata) in enumerate(golds):
        if not isinstance(answer, str) or not isinstance(metadata, dict):
            raise TypeError(f"gold row {row} must be (str, dict), got ({type(answer).__name__}, "
                            f"{type(metadata).__name__})")
        try:
            text = json.dumps({"answer": answer, "metadata": metadata}, ensure_ascii=False, sort_keys=True,
                              separators=(",", ":"))
        except (TypeError, ValueError) as error:
            raise TypeError(f"gold row {row} metadata is not JSON-serializable: {error}") from None
        data = text.encode("utf-8")
        if len(data) > max_bytes:
            raise ValueError(f"gold row {row} needs {len(data)} bytes as JSON but rows hold max_bytes={max_bytes}; "
                             f"raise max_bytes (answer starts {answer[:40]!r})")
        encoded[row, :len(data)] = np.frombuffer(data, np.uint8)
    return encoded


def decode_gold(row: np.ndarray) -> tuple[str, dict] | None:
    """(answer, metadata) of one uint8 [Lg] row written by `encode_golds`; None for an all-zero row."""
    data = np.asarray(row, np.uint8).tobytes().split(b"\0", 1)[0]
    if not data:
        return None
    value = json.loads(data.decode("utf-8"))
    return value["answer"], value["metadata"]
