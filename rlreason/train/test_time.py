"""Test-time compute: accuracy as a function of the samples drawn per problem and of the token budget.

Reads the per-sample rows of an evaluation (`eval/<set>/step_<N>.jsonl`: n consecutive rows per problem, each
with `answer` (the `<answer>` text, None when none), `lenient_answer` (the answer found anywhere, None when
none), `reward`, `length`, `format` and the verdicts `lenient` / `strict`) and computes, for k = 1, 2, 4, ... n
and each verdict:

- pass@k: the unbiased estimate from the n samples, 1 - C(n-c, k) / C(n, k) (`evaluate.pass_at_k`).
- maj@k: the exact expectation, over every k-subset of the n samples, of "the subset's most frequent answer is
  right", with the evaluation's own votes (`rlreason.train.evaluate`): strict, the `answer` after
  `canonical_answer` of the samples in the format; lenient, the `lenient_answer`. An unparseable sample (no
  answer) casts no vote, and a subset with no vote counts as wrong. Ties are broken uniformly at random, so a
  subset whose top answers tie counts the fraction of them that is right. An answer is right when a sample
  that gave it is right in the verdict. At k = n this is the evaluation's maj@n.
- best-of-k: the exact expectation, over every k-subset, of "the subset's sample with the highest `reward`
  (the verifier's score) is right in the verdict"; ties in reward broken uniformly at random; a missing or NaN
  reward ranks lowest.
- with a PRM's scores (`prm_score`, eval.prm): best-of-k by the PRM (as best-of-k, ranked by prm_score), and
  PRM-weighted voting (as maj@k, each vote weighted by its sample's prm_score: the answer with the largest sum
  wins), the expectation over every k-subset where there are at most SUBSETS of them, else over SUBSETS subsets
  drawn uniformly (seed 0).
- accuracy within a token budget B: the fraction of samples that are right and finished within B tokens
  (`length` <= B), i.e. pass@1 when generation were cut at B tokens.

Each point has its cost in generated tokens per problem, so that methods compare at equal compute: k * mean
length for the k-sample methods, mean(min(length, B)) for a budget B (what a cut at B would have generated).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rlreason.train.evaluate import pass_at_k
from rlreason.verifiers.answers import canonical_answer

VERDICTS = ("lenient", "strict")
METHODS = ("pass", "maj", "best", "prm_best", "prm_vote")  # summary keys `<method>@<k>_<verdict>`
METHOD_NAMES = {"pass": "pass@k", "maj": "maj@k", "best": "best-of-k (verifier)", "prm_best": "best-of-k (PRM)",
                "prm_vote": "PRM-weighted maj@k"}
# The row keys a (method, verdict) reads besides the verdict and `length`; rows without them skip it.
VOTE_KEYS = {"lenient": ("lenient_answer",), "strict": ("answer", "format")}
NEEDS = {**{("maj", verdict): keys for verdict, keys in VOTE_KEYS.items()},
         **{("best", verdict): ("reward",) for verdict in VERDICTS},
         **{("prm_best", verdict): ("prm_score",) for verdict in VERDICTS},
         **{("prm_vote", verdict): (*keys, "prm_score") for verdict, keys in VOTE_KEYS.items()}}
SUBSETS = 4096  # k-subsets past which PRM-weighted voting is estimated from a sample of them


class SampleRowsError(ValueError):
    """Per-sample rows that cannot be grouped into problems of equal sample counts."""


def problems(rows: list[dict]) -> list[list[dict]]:
    """The rows split into problems: consecutive rows of one question, n per problem.

    n is the shortest run of rows with one question; a longer run must be a multiple of it (neighbouring
    problems with the same question text). Raises SampleRowsError when it is not, or when there are no rows."""
    if not rows:
        raise SampleRowsError("no per-sample rows to group into problems")
    runs, start = [], 0
    for index in range(1, len(rows) + 1):
        if index == len(rows) or rows[index]["question"] != rows[start]["question"]:
            runs.append((start, index - start))
            start = index
    n = min(length for _, length in runs)
    uneven = next(((first, length) for first, length in runs if length % n), None)
    if uneven:
        raise SampleRowsError(f"rows {uneven[0] + 1}-{sum(uneven)} hold {uneven[1]} samples of one question, "
                              f"other problems {n}: expected the same number of consecutive rows per problem")
    return [rows[start:start + n] for start in range(0, len(rows), n)]


def sample_counts(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself."""
    return sorted({2 ** power for power in range(n.bit_length()) if 2 ** power <= n} | {n})


def token_budgets(lengths: np.ndarray) -> list[int]:
    """A budget grid for completions of these lengths: 1, 2, 4, ... below the longest, and the longest."""
    longest = max(int(np.max(lengths)), 1)
    return sample_counts(longest)


def votes(rows: list[dict], verdict: str) -> list[str | None]:
    """Each sample's vote for maj@k in `verdict` (module docstring); None: no vote."""
    if verdict == "lenient":
        return [row["lenient_answer"] for row in rows]
    return [canonical_answer(row["answer"]) if row["answer"] is not None and row["format"] else None
            for row in rows]


def majority_at_k(votes: list[str | None], right: list[bool], k: int) -> float:
    """maj@k of one problem: the expectation over the k-subsets of its n samples (module docstring).

    Exact, by counting: for a right answer j taking the majority with t votes, the other answers are counted by
    a generating polynomial in the subset size whose terms also track how many of them tie at t; answers with
    fewer than t votes in all, and the samples without a vote, can be chosen freely."""
    counts = Counter(answer for answer in votes if answer is not None)
    answer_right = {answer: any(ok for other, ok in zip(votes, right) if other == answer) for answer in counts}
    unvoted = sum(answer is None for answer in votes)
    n = len(votes)
    total = 0.0
    for answer, count in counts.items():
        if not answer_right[answer]:
            continue
        others = [other_count for other, other_count in counts.items() if other != answer]
        for t in range(1, min(count, k) + 1):
            rest = k - t
            free = unvoted + sum(c for c in others if c < t)
            # ways[s, m]: ways to choose m of the other samples so that exactly s other answers have t votes.
            ways = np.zeros((len(others) + 1, rest + 1))
            ways[0] = [math.comb(free, m) for m in range(rest + 1)]
            for c in (c for c in others if c >= t):
                below = np.array([math.comb(c, x) for x in range(min(t - 1, rest) + 1)])
                tied = np.zeros_like(ways)
                if t <= rest:
                    tied[1:, t:] = ways[:-1, :rest + 1 - t] * math.comb(c, t)
                ways = np.array([np.convolve(row, below)[:rest + 1] for row in ways]) + tied
            share = ways[:, rest] / np.arange(1, len(others) + 2)  # a tie among s+1 answers: 1/(s+1) each
            total += math.comb(count, t) * float(np.sum(share))
    return total / math.comb(n, k)


def best_of_k(rewards: list[float], right: list[bool], k: int) -> float:
    """best-of-k of one problem: the expectation over the k-subsets of its n samples (module docstring).

    Closed form: the subset's top reward is v with probability (C(n_{<=v}, k) - C(n_{<v}, k)) / C(n, k), and the
    chosen sample is then a uniform pick among the subset's samples at v, right with the fraction b_v / a_v of
    the samples at v that are right."""
    scores = np.array([-np.inf if reward is None or np.isnan(reward) else reward for reward in rewards], float)
    right = np.asarray(right, bool)
    n, total = len(scores), 0.0
    for value in np.unique(scores):
        at_value = scores == value
        below = int(np.sum(scores < value))
        top_is_value = math.comb(below + int(np.sum(at_value)), k) - math.comb(below, k)
        total += top_is_value * float(np.mean(right[at_value]))
    return total / math.comb(n, k)


def weighted_vote_at_k(votes: list[str | None], weights: list[float], right: list[bool], k: int) -> float:
    """PRM-weighted maj@k of one problem (module docstring): over k-subsets, the answer whose votes weigh most
    wins, ties shared uniformly; a subset without a vote counts as wrong."""
    answer_right = {answer: any(ok for other, ok in zip(votes, right) if other == answer)
                    for answer in set(votes) - {None}}
    n = len(votes)
    if math.comb(n, k) <= SUBSETS:
        subsets = itertools.combinations(range(n), k)
    else:
        draw = np.random.default_rng(0)
        subsets = (draw.choice(n, k, replace=False) for _ in range(SUBSETS))
    outcomes = []
    for subset in subsets:
        weight = Counter()
        for index in subset:
            if votes[index] is not None:
                weight[votes[index]] += weights[index]
        if not weight:
            outcomes.append(0.0)
            continue
        top = max(weight.values())
        winners = [answer for answer, total in weight.items() if total == top]
        outcomes.append(sum(answer_right[answer] for answer in winners) / len(winners))
    return float(np.mean(outcomes))


# (method, verdict) -> its value for one problem: (the problem's rows, their verdicts, k) -> float
K_SUBSET_METHODS = {
    "maj": lambda group, verdict, right, k: majority_at_k(votes(group, verdict), right, k),
    "best": lambda group, verdict, right, k: best_of_k([row["reward"] for row in group], right, k),
    "prm_best": lambda group, verdict, right, k: best_of_k([row["prm_score"] for row in group], right, k),
    "prm_vote": lambda group, verdict, right, k: weighted_vote_at_k(votes(group, verdict),
                                                                    [row["prm_score"] for row in group], right, k),
}


def sample_curves(rows: list[dict]) -> list[dict]:
    """One row per k = 1, 2, 4, ... n: {"k", "tokens" (k * mean length), "pass@k_lenient", "maj@k_lenient",
    "best@k_lenient", with a PRM "prm_best@k_lenient" and "prm_vote@k_lenient", and the same `_strict`}, each a
    mean over the problems; a method whose row keys (NEEDS) the rows lack, an evaluation that did not record
    them, is left out."""
    groups = problems(rows)
    computed = [(method, verdict) for verdict in VERDICTS for method in METHODS
                if all(key in row for row in rows for key in NEEDS.get((method, verdict), ()))]
    n = len(groups[0])
    mean_length = float(np.mean([row["length"] for row in rows]))
    curves = []
    for k in sample_counts(n):
        point = {"k": k, "tokens": k * mean_length}
        for verdict in VERDICTS:
            right = [[bool(row[verdict]) for row in group] for group in groups]
            point[f"pass@k_{verdict}"] = float(np.mean([pass_at_k(n, sum(ok), k) for ok in right]))
            for method, value in K_SUBSET_METHODS.items():
                if (method, verdict) in computed:
                    point[f"{method}@k_{verdict}"] = float(np.mean([value(group, verdict, ok, k)
                                                                    for group, ok in zip(groups, right)]))
        curves.append(point)
    return curves


def budget_curve(rows: list[dict], budgets: list[int] | None = None) -> list[dict]:
    """One row per token budget B (default `token_budgets`): {"budget", "tokens" (mean of min(length, B)),
    "lenient", "strict"} with the fraction of samples right and of length <= B."""
    lengths = np.array([row["length"] for row in rows])
    curve = []
    for budget in budgets or token_budgets(lengths):
        within = lengths <= budget
        point = {"budget": budget, "tokens": float(np.mean(np.minimum(lengths, budget)))}
        for verdict in VERDICTS:
            point[verdict] = float(np.mean(within & np.array([bool(row[verdict]) for row in rows])))
        curve.append(point)
    return curve


def columns_of(samples: list[dict]) -> list[tuple[str, str]]:
    """The (method, verdict) pairs that `sample_curves` computed, verdict by verdict."""
    return [(method, verdict) for verdict in VERDICTS for method in METHODS if f"{method}@k_{verdict}" in samples[0]]


def markdown_tables(samples: list[dict], budgets: list[dict]) -> list[str]:
    """The two curves as Markdown tables (lines)."""
    methods = [(f"{method}@k_{verdict}", f"{METHOD_NAMES[method]}, {verdict}")
               for method, verdict in columns_of(samples)]
    lines = ["| k | tokens / problem | " + " | ".join(name for _, name in methods) + " |",
             "| --- | --- |" + " --- |" * len(methods)]
    lines += [f"| {point['k']} | {point['tokens']:.0f} | " + " | ".join(f"{point[key]:.3f}" for key, _ in methods)
              + " |" for point in samples]
    lines += ["", "| token budget B | tokens / problem | right within B, lenient | right within B, strict |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {point['budget']} | {point['tokens']:.1f} | {point['lenient']:.3f} | {point['strict']:.3f} |"
              for point in budgets]
    return lines


def plot_test_time_compute(samples: list[dict], budgets: list[dict], path: Path, title: str) -> None:
    """The o1-style plot: accuracy against generated tokens per problem (log scale), one line per method,
    solid lenient and dashed strict; written as a PNG to `path`."""
    # A Figure of its own, not pyplot's: no GUI backend is needed, and a notebook's backend is left alone.
    figure = Figure(figsize=(6, 4), dpi=100)
    axis = figure.subplots()
    tokens = [point["tokens"] for point in samples]
    styles = dict(zip(VERDICTS, ("-", "--")))
    for method, verdict in columns_of(samples):
        axis.plot(tokens, [point[f"{method}@k_{verdict}"] for point in samples], styles[verdict], marker="o",
                  markersize=3, color=f"C{METHODS.index(method)}", label=f"{METHOD_NAMES[method]}, {verdict}")
    for verdict, style in styles.items():
        axis.plot([point["tokens"] for point in budgets], [point[verdict] for point in budgets], style, marker="s",
                  markersize=3, color=f"C{len(METHODS)}", label=f"1 sample, budget B, {verdict}")
    save_accuracy_plot(figure, axis, title, path)


def save_accuracy_plot(figure: Figure, axis, title: str, path: Path) -> None:
    """Finishes an accuracy-against-generated-tokens plot (log-scale tokens, a legend) and writes it as a PNG."""
    axis.set_xscale("log", base=2)
    axis.set_xlabel("generated tokens per problem")
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path)
