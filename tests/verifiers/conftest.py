"""Fixtures shared by the verifier tests: a small project tokenizer and one warm worker pool."""

from __future__ import annotations

import random

import pytest

from rlreason.tokenizers import train_sentencepiece
from rlreason.verifiers import WorkerPool


def _corpus(size: int) -> list[str]:
    rng = random.Random(0)
    lines = []
    for _ in range(size):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        lines.append(f"User: What is {a} + {b}?\nAssistant: <think> {a} + {b} = {a + b} </think> "
                     f"<answer> {a + b} </answer>")
        lines.append(f"<think>Let me compute {a} - {b} and check it.</think>\n<answer>{a - b}</answer>")
    return lines


@pytest.fixture(scope="session")
def tokenizer():
    """Trained like the project's tokenizers: the four tags are single pieces, digits are split, and " -", "▁What"
    and similar merges of a space with what follows exist; byte fallback covers any other character."""
    return train_sentencepiece(_corpus(400), vocab_size=400, byte_fallback=True)


@pytest.fixture(scope="session")
def pool():
    """Two workers, as on a 2-core machine; started on first use, killed at the end of the session."""
    worker_pool = WorkerPool(num_workers=2, preload=["rlreason.verifiers.math"])
    yield worker_pool
    worker_pool.close()
