"""Test-time compute curves against hand-computed cases and a brute-force enumeration of every k-subset."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from matplotlib.image import imread

from rlreason.train.test_time import (SUBSETS, SampleRowsError, best_of_k, budget_curve, majority_at_k,
                                      markdown_tables, plot_test_time_compute, problems, sample_counts, sample_curves,
                                      votes, weighted_vote_at_k)


def subset_majority(votes, right, subset) -> Fraction:
    """The definition read literally: the subset's votes, ties shared, no vote wrong."""
    tally = {}
    for index in subset:
        if votes[index] is not None:
            tally[votes[index]] = tally.get(votes[index], 0) + 1
    if not tally:
        return Fraction(0)
    top = max(tally.values())
    winners = [answer for answer, count in tally.items() if count == top]
    good = {votes[i] for i in range(len(votes)) if right[i] and votes[i] is not None}
    return Fraction(sum(answer in good for answer in winners), len(winners))


def subset_best(rewards, right, subset) -> Fraction:
    score = lambda i: -math.inf if rewards[i] is None or math.isnan(rewards[i]) else rewards[i]  # noqa: E731
    top = max(score(i) for i in subset)
    chosen = [i for i in subset if score(i) == top]
    return Fraction(sum(right[i] for i in chosen), len(chosen))


def brute_force(per_subset, values, right, k) -> float:
    subsets = list(itertools.combinations(range(len(right)), k))
    return float(sum(per_subset(values, right, subset) for subset in subsets) / len(subsets))


def test_majority_on_a_tie_and_an_unparseable_answer_by_hand():
    votes, right = ["7", "7", "3", None], [True, True, False, False]
    # k=2: {7,7} 1, {7,3} twice a tie 1/2, {7,-} twice 1, {3,-} 0 -> 4/6.
    assert majority_at_k(votes, right, 2) == pytest.approx(4 / 6, abs=1e-15)
    # k=3: {7,7,3} 1, {7,7,-} 1, {7,3,-} twice a tie 1/2 -> 3/4.
    assert majority_at_k(votes, right, 3) == pytest.approx(3 / 4, abs=1e-15)
    assert majority_at_k(votes, right, 1) == pytest.approx(2 / 4, abs=1e-15)
    assert majority_at_k([None, None, None], [False] * 3, 2) == 0.0  # no vote in any subset: wrong


def test_best_of_k_breaks_reward_ties_evenly_and_ranks_a_missing_reward_lowest_by_hand():
    rewards, right = [1.0, 1.0, 0.5, float("nan")], [True, False, True, False]
    # {0,1} tie 1/2, {0,2} 1, {0,3} 1, {1,2} 0, {1,3} 0, {2,3} 1 -> 3.5 / 6.
    assert best_of_k(rewards, right, 2) == pytest.approx(3.5 / 6, abs=1e-15)
    assert best_of_k(rewards, right, 4) == pytest.approx(0.5, abs=1e-15)  # the two at 1.0, one right
    assert best_of_k([None, 0.0], [True, False], 2) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_majority_and_best_of_k_equal_the_enumeration_of_every_subset(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    alphabet = ["1", "2", "3", "4", None]  # two right answers, and no vote
    cast = [alphabet[i] for i in rng.integers(0, len(alphabet), n)]
    right = [vote in ("3", "4") for vote in cast]
    rewards = [float(value) for value in rng.choice([0.0, 0.5, 1.0, np.nan], n)]
    for k in range(1, n + 1):
        # Sums of at most C(8, 4) = 70 terms of size <= 1 in float64: exact to a few ulps.
        assert majority_at_k(cast, right, k) == pytest.approx(brute_force(subset_majority, cast, right, k),
                                                              abs=1e-12), (cast, k)
        assert best_of_k(rewards, right, k) == pytest.approx(brute_force(subset_best, rewards, right, k),
                                                             abs=1e-12), (rewards, k)


def subset_weighted_vote(cast_and_weights, right, subset) -> float:
    """The definition read literally: each vote weighs its sample's PRM score, the heaviest answer wins."""
    cast, weights = cast_and_weights
    tally = {}
    for index in subset:
        if cast[index] is not None:
            tally[cast[index]] = tally.get(cast[index], 0.0) + weights[index]
    if not tally:
        return 0.0
    top = max(tally.values())
    winners = [answer for answer, total in tally.items() if total == top]
    good = {cast[i] for i in range(len(cast)) if right[i] and cast[i] is not None}
    return sum(answer in good for answer in winners) / len(winners)


def test_prm_weighted_voting_by_hand_and_by_enumeration():
    cast, right = ["3", "3", "5", None], [False, False, True, False]
    # All four: "3" weighs 0.2, "5" 0.9: the PRM outvotes the majority.
    assert weighted_vote_at_k(cast, [0.1, 0.1, 0.9, 1.0], right, 4) == 1.0
    assert majority_at_k(cast, right, 4) == 0.0
    # k=1: one sample at a time, the lone vote wins (the unvoted one is wrong): 1/4.
    assert weighted_vote_at_k(cast, [0.1, 0.1, 0.9, 1.0], right, 1) == pytest.approx(1 / 4)
    rng = np.random.default_rng(7)
    for _ in range(5):
        n = int(rng.integers(2, 9))
        votes_cast = [["1", "2", "3", None][i] for i in rng.integers(0, 4, n)]
        weights = [float(w) for w in rng.choice([0.25, 0.5, 1.0], n)]
        ok = [vote == "3" for vote in votes_cast]
        for k in range(1, n + 1):
            assert weighted_vote_at_k(votes_cast, weights, ok, k) == pytest.approx(
                brute_force(subset_weighted_vote, (votes_cast, weights), ok, k), abs=1e-12)
    # Equal weights: weighted voting is majority voting.
    assert weighted_vote_at_k(cast, [1.0] * 4, right, 3) == pytest.approx(majority_at_k(cast, right, 3))


def test_prm_weighted_voting_past_the_subset_cap_is_a_seeded_estimate():
    n, k = 16, 8  # C(16, 8) = 12870 > SUBSETS
    assert math.comb(n, k) > SUBSETS
    cast = ["1"] * 9 + ["2"] * 7
    right = [False] * 9 + [True] * 7
    weights = [0.2] * 9 + [0.5] * 7  # "2" wins unless a subset holds 3x as many "1"s
    estimate = weighted_vote_at_k(cast, weights, right, k)
    assert estimate == weighted_vote_at_k(cast, weights, right, k)  # seeded: the same draw
    exact = brute_force(subset_weighted_vote, (cast, weights), right, k)
    assert estimate == pytest.approx(exact, abs=4 / math.sqrt(SUBSETS))  # within 4 standard errors of a share


def test_prm_methods_appear_only_with_prm_scores():
    assert not any(key.startswith("prm_") for key in sample_curves(ROWS)[0])
    scored = [dict(row, prm_score=1.0 if row["reward"] == 1.0 else 0.1) for row in ROWS]
    points = {point["k"]: point for point in sample_curves(scored)}
    # The PRM here trusts the verifier's reward-1 sample: best-of-4 by it is that sample, right in both verdicts.
    assert points[4]["prm_best@k_strict"] == pytest.approx(points[4]["best@k_strict"]) == pytest.approx(1.0)
    assert "prm_vote@k_lenient" in points[4] and "prm_vote@k_strict" in points[4]


def test_votes_are_the_evaluations_strict_from_the_format_lenient_anywhere():
    rows = [{"answer": " 04", "lenient_answer": "04", "format": True}, {"answer": "4", "lenient_answer": "4",
                                                                       "format": False},
            {"answer": None, "lenient_answer": "5", "format": False}]
    assert votes(rows, "strict") == ["4", None, None]  # canonical text; no vote outside the format
    assert votes(rows, "lenient") == ["04", "4", "5"]


def rows_of(problem_rows):
    """Per-sample rows of eval/<set>/step_<N>.jsonl's shape."""
    return [{"question": question, "gold": "4", "completion": "...", "correct": lenient and strict, "strict": strict,
             "lenient": lenient, "format": strict, "length": length, "reward": reward, "answer": answer,
             "lenient_answer": answer}
            for question, samples in problem_rows for lenient, strict, length, reward, answer in samples]


ROWS = rows_of([
    ("2+2", [(True, True, 4, 1.0, "4"), (True, False, 10, 0.0, "4"), (False, False, 6, 0.0, "5"),
             (False, False, 20, 0.0, None)]),
    ("1+1", [(False, False, 8, 0.0, "3"), (False, False, 8, 0.0, "3"), (True, True, 2, 1.0, "2"),
             (False, False, 2, 0.0, None)]),
])


def test_curves_over_k_and_budget_by_hand():
    points = {point["k"]: point for point in sample_curves(ROWS)}
    assert sorted(points) == [1, 2, 4]
    mean_length = 60 / 8
    assert [points[k]["tokens"] for k in (1, 2, 4)] == pytest.approx([mean_length, 2 * mean_length, 4 * mean_length])
    # pass@1: lenient 2/4 and 1/4, strict 1/4 and 1/4.
    assert points[1]["pass@k_lenient"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert points[1]["pass@k_strict"] == pytest.approx(1 / 4)
    # pass@2 lenient: 1 - C(2,2)/C(4,2) = 5/6 and 1 - C(3,2)/C(4,2) = 1/2.
    assert points[2]["pass@k_lenient"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    # maj@4 lenient: "4" wins 2-1 (right); "3" wins 2-1 (wrong).
    assert points[4]["maj@k_lenient"] == pytest.approx(0.5)
    # best@4: the reward-1 sample of each problem, right in both verdicts.
    assert points[4]["best@k_strict"] == pytest.approx(1.0)
    budgets = {point["budget"]: point for point in budget_curve(ROWS)}
    assert sorted(budgets) == [1, 2, 4, 8, 16, 20]
    # B=4: right and length <= 4: problem 1's first sample and problem 2's third -> 2/8, strict too.
    assert budgets[4]["lenient"] == pytest.approx(2 / 8) and budgets[4]["strict"] == pytest.approx(2 / 8)
    assert budgets[4]["tokens"] == pytest.approx((4 + 4 + 4 + 4 + 4 + 4 + 2 + 2) / 8)
    assert budgets[20]["lenient"] == pytest.approx(3 / 8) and budgets[20]["tokens"] == pytest.approx(mean_length)
    assert budget_curve(ROWS, [5])[0]["lenient"] == pytest.approx(2 / 8)


def test_table_and_plot(tmp_path):
    samples, budgets = sample_curves(ROWS), budget_curve(ROWS)
    lines = markdown_tables(samples, budgets)
    assert lines[0].startswith("| k | tokens / problem | pass@k, lenient | maj@k, lenient |")
    assert lines[2].startswith("| 1 | 8 | 0.375 | ")  # k=1: 7.5 tokens, pass@1 lenient 3/8
    assert "| 4 | 3.5 | 0.250 | 0.250 |" in lines  # B=4: tokens (6 * 4 + 2 * 2) / 8, right 2 of 8
    plot_test_time_compute(samples, budgets, tmp_path / "curve.png", "test")
    image = imread(tmp_path / "curve.png")
    assert image.shape[:2] == (400, 600)
    assert image.std() > 0.05  # not a blank canvas


def test_sample_grids_and_bad_groups():
    assert sample_counts(1) == [1] and sample_counts(8) == [1, 2, 4, 8] and sample_counts(6) == [1, 2, 4, 6]
    assert len(problems(ROWS)) == 2
    twice = rows_of([("2+2", [(True, True, 1, 1.0, "4")] * 2), ("2+2", [(True, True, 1, 1.0, "4")] * 2),
                     ("1+1", [(True, True, 1, 1.0, "2")] * 2)])
    assert [len(group) for group in problems(twice)] == [2, 2, 2]  # same question twice in a row: two problems
    with pytest.raises(SampleRowsError, match="rows 3-5 hold 3 samples of one question, other problems 2"):
        problems(twice[:2] + twice[4:] + twice[4:5] + rows_of([("3+3", [(True, True, 1, 1.0, "6")] * 2)]))
    with pytest.raises(SampleRowsError, match="no per-sample rows"):
        problems([])
