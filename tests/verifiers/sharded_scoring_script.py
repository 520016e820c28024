"""Run by test_reward_bridge_sharded.py in a fresh process with 8 simulated CPU devices (XLA_FLAGS set by the
caller before JAX is imported). Prints one JSON object: per case, the rewards, the rewards of direct calls, how
many rows each host callback scored, how often each row was scored, the mesh axes the rows come back split over,
and whether the devices holding the same rows hold the same scores.

Besides the built-in functions, rows are scored by `call_number`, which returns how many calls it has seen in this
process: a row scored twice (once per replica) gets two different numbers, so replicas that each score their
rows again cannot agree."""

from __future__ import annotations

import collections
import itertools
import json

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from rlreason.config import RewardConfig
from rlreason.parallel.rules import AXIS_RULES
from rlreason.tokenizers import train_sentencepiece
from rlreason.verifiers import bridge, encode_golds, get_reward_fn, reward_function

from token_rows import padded_rows

NAMES = ("r1_format", "exact_answer", "countdown", "math_equiv")
PUZZLE = {"numbers": [6, 7, 3, 2], "target": 28}
_calls = [itertools.count(1)]  # a fresh count per case


@reward_function("call_number")
def call_number(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    return float(next(_calls[0]))


def _rows(count: int) -> list[tuple[str, str, dict]]:
    kinds = [
        lambda i: (f"<think>{i} + 1</think> <answer>{i + 1}</answer>", str(i + 1), {}),
        lambda i: (f"<think>t</think><answer>{i}</answer>", str(i + 1), {}),
        lambda i: (f"<think>row {i}</think><answer>(6 / 3 + 2) * 7</answer>", "28", PUZZLE),
        lambda i: (f"<answer>\\frac{{{2 * i}}}{{4}}</answer> row {i}", f"{i} / 2", {}),
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


def _axes(entry) -> list[str]:
    """The mesh axes of one PartitionSpec entry (None, an axis name or a tuple of names)."""
    return [] if entry is None else [entry] if isinstance(entry, str) else list(entry)


def _replicas_agree(rewards: jax.Array) -> bool:
    """True if every two devices holding the same rows hold the same scores."""
    by_rows = collections.defaultdict(list)
    for shard in rewards.addressable_shards:
        by_rows[str(shard.index)].append(np.asarray(shard.data))
    return all(np.array_equal(first, other, equal_nan=True) for first, *others in by_rows.values() for other in others)


def main() -> None:
    assert jax.device_count() == 8
    tokenizer = train_sentencepiece([f"<think>{i} + 1</think> <answer>{i + 1}</answer> row frac" for i in range(300)],
                                    vocab_size=320, byte_fallback=True)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    rows_per_call, scored = [], collections.Counter()
    real_score_texts = bridge.score_texts

    def recording_score_texts(reward_fns, prompts, completions, *rest):
        rows_per_call.append(len(completions))
        scored.update(completions)
        return real_score_texts(reward_fns, prompts, completions, *rest)

    bridge.score_texts = recording_score_texts
    report = {}
    # 16 and 4 rows split over data x fsdp by the default rules, tensor replicas sharing them; 8 rows split over
    # data only by an overridden `batch` rule, fsdp x tensor replicas (4 devices) sharing them.
    cases = {"16": (16, AXIS_RULES), "4": (4, AXIS_RULES), "8 over data": (8, {**AXIS_RULES, "batch": ("data",)})}
    for label, (count, rules) in cases.items():
        rows_per_call.clear()
        scored.clear()
        _calls[0] = itertools.count(1)
        score = jax.jit(bridge.make_scorer(tokenizer, tuple(RewardConfig(name) for name in (*NAMES, "call_number")),
                                           timeout_s=5.0, mesh=mesh, rules=rules))
        rows = _rows(count)
        completion_tokens, completion_mask = padded_rows(tokenizer, [row[0] for row in rows], 32, eos=True)
        prompt_tokens = np.ones((count, 4), np.int32)
        prompt_mask = np.zeros((count, 4), bool)
        gold_bytes = encode_golds([(gold, metadata) for _, gold, metadata in rows], max_bytes=96)
        batch_sharding = NamedSharding(mesh, PartitionSpec(rules["batch"]))
        batch = jax.device_put((prompt_tokens, prompt_mask, completion_tokens, completion_mask, gold_bytes),
                               batch_sharding)
        rewards = score(*batch)
        direct = [[get_reward_fn(name)("", completion, gold, metadata) for name in NAMES]
                  for completion, gold, metadata in rows]
        report[label] = {
            "rewards": np.asarray(rewards)[:, :len(NAMES)].tolist(),
            "call_numbers": sorted(np.asarray(rewards)[:, len(NAMES)].tolist()),
            "direct": direct,
            "rows_per_call": sorted(rows_per_call),
            "times_scored": sorted(scored[completion] for completion, _, _ in rows),
            "row_axes": _axes(rewards.sharding.spec[0]),
            "replicas_agree": _replicas_agree(rewards),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
