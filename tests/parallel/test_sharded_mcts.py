"""MCTS and step-level beam search with the sampler's rows split over 8 CPU devices (params sharded too) search as
on one device: each leaf's (beam's) samples depend on its tree's (problem's) and round's key alone, not on where
its row runs."""

from __future__ import annotations

import json

import numpy as np


def test_sharded_search_equals_single_device_search(tmp_path, run_python):
    path = tmp_path / "mcts.json"
    run_python(["tests/parallel/scripts/sharded_mcts.py", str(path)], timeout=900)
    runs = json.loads(path.read_text())
    single, sharded = runs["single"], runs["sharded"]
    assert len(single) == len(sharded) == 8
    for one, other in zip(single, sharded):
        for key in ("completion", "tokens_generated", "root_visits", "tree"):
            assert one[key] == other[key], key
        np.testing.assert_allclose(other["logprobs"], one["logprobs"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(other["value"], one["value"], rtol=0, atol=1e-6)
    # The trees differ between problems: the comparison covers more than one search repeated.
    assert len({json.dumps(run["tree"]) for run in single}) > 1
    assert sum(len(run["tree"]) for run in single) > 8 * 3
    # Beam search: the same completions, scores and costs.
    assert len(runs["beam_single"]) == len(runs["beam_sharded"]) == 8
    assert runs["beam_single"] == runs["beam_sharded"]
    assert len({tuple(run["completion"]) for run in runs["beam_single"]}) > 1
