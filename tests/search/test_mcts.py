"""MCTS over reasoning steps: PUCT and visit counts on hand-made trees (against hand counts and an independent
loop written from the formula), then the search with a tiny transformer through the compiled sampler: its steps
are the model's own, the token count is what the sampler generated, a key fixes the run, and its completions
become SFT rows `rlreason sft` reads."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import jax
import numpy as np
import pytest

from rlreason.data.encoding import left_pad
from rlreason.data.sft import encode_sft_example, read_sft_examples
from rlreason.models.logprobs import completion_logprobs
from rlreason.sampling.sampler import SamplingParams, generate_groups
from rlreason.search import mcts
from rlreason.search.mcts import (Child, Node, PRMEvaluator, RolloutEvaluator, best_node, mcts_search, puct_scores,
                                  run_search, select_child, sft_rows, step_priors, verified_completions)
from rlreason.train.jsonl import write_rows
from test_beam import CFG, PARAMS, PROMPT, TOKENIZER

# ---- the search core on hand-made trees ------------------------------------------------------------------------


def test_puct_scores_are_the_hand_computed_ones():
    priors, visits, sums = np.array([0.5, 0.3, 0.2]), np.array([2, 1, 0]), np.array([1.0, 0.8, 0.0])
    # Q = [0.5, 0.8, first play]; U = P * sqrt(4) / (1 + N) = [1/3, 0.3, 0.4].
    np.testing.assert_allclose(puct_scores(priors, visits, sums, 4, 1.0, 0.0), [0.5 + 1 / 3, 1.1, 0.4])
    np.testing.assert_allclose(puct_scores(priors, visits, sums, 4, 1.0, 0.9), [0.5 + 1 / 3, 1.1, 1.3])
    parent = Node([], np.zeros(0), 1.0, 0, False, visits=4, value_sum=3.6)  # Q = 0.9
    parent.children = [Node([token], np.zeros(1), prior, 1, False, parent, visits=int(n), value_sum=float(w))
                       for token, prior, n, w in zip(range(3), priors, visits, sums)]
    assert select_child(parent, 1.0, 0.0) == 1
    assert select_child(parent, 1.0, "parent") == 2  # the unvisited child now plays at the parent's 0.9
    assert select_child(parent, 0.0, 0.0) == 1  # no exploration: the best Q


def test_identical_samples_make_one_child_with_the_step_probability():
    children = [Child([5, 6], np.log([0.5, 0.4]), False), Child([7], np.log([0.1]), True),
                Child([5, 6], np.log([0.5, 0.4]), False)]
    distinct, priors = step_priors(children)
    assert [child.step for child in distinct] == [[5, 6], [7]]
    np.testing.assert_allclose(priors, [0.2 / 0.3, 0.1 / 0.3])


# The hand-made tree: root -> a (prior 0.7), b (0.3); a -> a1 (stops), a2; b -> b1 (stops). Steps are one token.
A, B, A1, A2, B1 = 1, 2, 3, 4, 5
HAND_CHILDREN = {(): [(A, 0.7, False), (B, 0.3, False)], (A,): [(A1, 0.5, True), (A2, 0.5, False)],
                 (B,): [(B1, 1.0, True)]}
HAND_VALUES = {(): 0.5, (A,): 0.2, (B,): 0.9, (A, A1): 0.0, (A, A2): 0.5, (B, B1): 1.0}


def stub_search(children: dict, values: dict, simulations: int, max_steps: int, c_puct: float, first_play,
                num_trees: int = 1):
    """run_search with expansions and values read from tables keyed by the path's tokens; records the calls."""
    calls = {"expand": [], "evaluate": []}

    def expand(leaves):
        calls["expand"].append([tuple(leaf.node.completion()) for leaf in leaves])
        return [[Child([token], np.log([p]), stopped) for token, p, stopped in children[tuple(leaf.node.completion())]]
                for leaf in leaves]

    def evaluate(leaves):
        calls["evaluate"].append([tuple(leaf.node.completion()) for leaf in leaves])
        return [values[tuple(leaf.node.completion())] for leaf in leaves]

    return run_search(num_trees, expand, evaluate, simulations, max_steps, c_puct, first_play), calls


def test_visit_counts_on_the_hand_made_tree_are_the_hand_counted_ones():
    # With c_puct 1 and first play 0 (worked by hand): 1 expands the root; 2 picks a (0.7 vs 0.3) and expands
    # it; 3 picks a again (0.2 + 0.7 sqrt2/2 = 0.695 > 0.3 sqrt2 = 0.424), then a1 (tie 0.5 = 0.5: the first),
    # terminal, value 0; 4 picks b (0.1 + 0.7 sqrt3/3 = 0.504 < 0.3 sqrt3 = 0.520) and expands it (0.9); 5 picks
    # b (1.2 > 0.567), then b1, terminal, value 1; 6 picks b (1.17 > 0.622) and b1 again.
    roots, calls = stub_search(HAND_CHILDREN, HAND_VALUES, 6, 3, 1.0, 0.0)
    root = roots[0]
    assert [child.visits for child in root.children] == [2, 3]
    a, b = root.children
    assert [child.visits for child in a.children] == [1, 0] and [child.visits for child in b.children] == [2]
    np.testing.assert_allclose([root.q, a.q, b.q], [(0.5 + 0.2 + 0 + 0.9 + 1 + 1) / 6, 0.1, 2.9 / 3])
    assert calls["expand"] == [[()], [(A,)], [(B,)]]  # terminals are never expanded
    assert calls["evaluate"] == [[()], [(A,)], [(A, A1)], [(B,)], [(B, B1)]]  # b1 is scored once, not twice
    assert best_node(root, "visits").completion() == [B, B1]
    assert best_node(root, "value").completion() == [B, B1]


def test_best_node_picks_by_visits_or_by_value():
    roots, _ = stub_search(HAND_CHILDREN, HAND_VALUES, 5, 3, 1.0, 0.0)
    # After 5 rounds a and b have 2 visits each (the first, a, wins the tie) and a's visited child a1 is terminal.
    assert [child.visits for child in roots[0].children] == [2, 2]
    assert best_node(roots[0], "visits").completion() == [A, A1]
    assert best_node(roots[0], "value").completion() == [B, B1]  # 1.0 > 0.0
    roots, _ = stub_search(HAND_CHILDREN, HAND_VALUES, 2, 3, 1.0, 0.0)
    # After 2 rounds the most-visited path ends at a, expanded, its children unvisited: no terminal yet.
    for pick in ("visits", "value"):
        assert best_node(roots[0], pick).completion() == [A] and not best_node(roots[0], pick).terminal


def random_tree(seed: int, branching: int, depth: int) -> tuple[dict, dict]:
    """Children (token, prior, stopped) and values of every path of a random tree; a quarter of steps stop."""
    rng = np.random.default_rng(seed)
    children, values, token = {}, {(): float(rng.uniform())}, itertools.count(1)
    frontier = [()]
    while frontier:
        path = frontier.pop()
        priors = rng.dirichlet(np.ones(branching))
        children[path] = []
        for prior in priors:
            child, stopped = path + (next(token),), bool(rng.uniform() < 0.25)
            children[path].append((child[-1], float(prior), stopped))
            values[child] = float(rng.uniform())
            if not stopped and len(child) < depth:
                frontier.append(child)
    return children, values


def reference_visits(children: dict, values: dict, simulations: int, max_steps: int, c_puct: float,
                     first_play) -> dict:
    """Visit counts of every path, by a loop written from the formula on dicts (no Node, no numpy)."""
    stopped = {path + (token,) for path, kids in children.items() for token, _, stop in kids if stop}
    visits, sums, expanded = defaultdict(int), defaultdict(float), set()
    for _ in range(simulations):
        path = ()
        while path in expanded:
            total = sum(prior for _, prior, _ in children[path])
            best_score, best = -math.inf, None
            for token, prior, _ in children[path]:
                child = path + (token,)
                if visits[child]:
                    q = sums[child] / visits[child]
                else:
                    q = sums[path] / visits[path] if first_play == "parent" else first_play
                score = q + c_puct * (prior / total) * math.sqrt(visits[path]) / (1 + visits[child])
                if score > best_score:
                    best_score, best = score, child
            path = best
        if path not in stopped and len(path) < max_steps:
            expanded.add(path)
        for cut in range(len(path) + 1):
            visits[path[:cut]] += 1
            sums[path[:cut]] += values[path]
    return {path: count for path, count in visits.items() if count}


def node_visits(root: Node) -> dict:
    found, stack = {}, [root]
    while stack:
        node = stack.pop()
        if node.visits:
            found[tuple(node.completion())] = node.visits
        stack.extend(node.children)
    return found


@pytest.mark.parametrize("c_puct, first_play", [(1.5, 0.0), (0.5, "parent"), (3.0, 0.4)])
def test_visit_counts_match_a_reference_loop_on_random_trees(c_puct, first_play):
    for seed in range(3):
        children, values = random_tree(seed, branching=3, depth=4)
        roots, _ = stub_search(children, values, 40, 4, c_puct, first_play, num_trees=2)
        want = reference_visits(children, values, 40, 4, c_puct, first_play)
        assert len(want) > 10  # the search went past the root's children
        for root in roots:  # the trees of one batch search independently
            assert node_visits(root) == want, seed


# ---- the search with a tiny transformer ------------------------------------------------------------------------

PROMPTS = [PROMPT, TOKENIZER.encode("what is 3+4?")]
STOP_IDS = tuple(TOKENIZER.stop_ids)
# The random model writes few ","s: let every fourth ordinary token end a step, so steps end at delimiters and
# at the step length both.
TABLE = np.array([token % 4 == 0 and not TOKENIZER.is_special(token) for token in range(TOKENIZER.vocab_size)])
SAMPLED = SamplingParams(max_new_tokens=0, temperature=1.0)  # max_new_tokens: unused, steps have their own
GREEDY = SamplingParams(max_new_tokens=0, temperature=0.0)
TARGET = TOKENIZER.encode("1")[-1]
MAX_STEPS, STEP_TOKENS, SIMULATIONS = 3, 4, 10


def holds_target(problem: int, text: str) -> float:
    return float("th" in text)


def target_share(tokens, mask):
    """A stand-in PRM [R]: the share of the row's real tokens that are TARGET."""
    mask = mask.astype(bool)
    return np.sum((tokens == TARGET) & mask, axis=1) / np.sum(mask, axis=1)


ROLLOUTS = RolloutEvaluator(holds_target, num_rollouts=2, max_new_tokens=6)


def search(rng, evaluator=ROLLOUTS, sampling=SAMPLED, expand=3, simulations=SIMULATIONS):
    # An optimistic first play (1, the best value) tries every sibling once: the random model's priors are
    # peaked, so with first play 0 a few simulations would only follow the likeliest steps.
    return mcts_search(PARAMS, CFG, TOKENIZER, PROMPTS, evaluator, TABLE, simulations=simulations, expand=expand,
                       max_steps=MAX_STEPS, max_step_tokens=STEP_TOKENS, sampling=sampling, rng=rng,
                       first_play=1.0)


def all_nodes(root: Node) -> list[Node]:
    nodes, stack = [], [root]
    while stack:
        nodes.append(stack.pop())
        stack.extend(nodes[-1].children)
    return nodes


def model_logprobs(prompt: list[int], completion: list[int]) -> np.ndarray:
    """[len(completion)] the model's log-probs of `completion` after `prompt`, by one teacher-forced pass."""
    tokens, mask = left_pad(prompt, len(prompt), TOKENIZER.pad_id)
    return np.asarray(completion_logprobs(PARAMS, tokens[None], mask[None], np.asarray([completion], np.int32),
                                          CFG, SAMPLED.temperature))[0]


@pytest.fixture(scope="module")
def counted_search():
    """A rollout-valued search of PROMPTS with every sampler call recorded: {tree: tokens generated}."""
    generated = defaultdict(int)
    real = mcts.continue_sequences

    def counting(params, cfg, sequences, width, keys, sampling, group_size, *rest):
        continuations = real(params, cfg, sequences, width, keys, sampling, group_size, *rest)
        for row, continuation in enumerate(continuations):
            sequence = sequences[row // group_size]
            tree = next(index for index, prompt in enumerate(PROMPTS) if sequence[:len(prompt)] == prompt)
            generated[tree] += len(continuation.ids)
        return continuations

    mcts.continue_sequences = counting
    try:
        return search(jax.random.key(0)), dict(generated)
    finally:
        mcts.continue_sequences = real


def test_the_token_count_is_what_the_sampler_generated(counted_search):
    results, generated = counted_search
    assert [result.tokens_generated for result in results] == [generated[0], generated[1]]
    # More than the tree's steps: rollouts and merged duplicate samples cost tokens too.
    for result in results:
        assert result.tokens_generated > sum(len(node.step) for node in all_nodes(result.root))


def test_steps_are_the_models_own_with_its_log_probs_and_priors(counted_search):
    results, _ = counted_search
    for prompt, result in zip(PROMPTS, results):
        assert result.root.visits == SIMULATIONS and sum(result.root_visits) == SIMULATIONS - 1
        for node in all_nodes(result.root)[1:]:
            step = node.step
            assert 1 <= len(step) <= STEP_TOKENS
            ended_at = step[-1] in STOP_IDS or TABLE[step[-1]]
            assert ended_at or len(step) == STEP_TOKENS, step
            assert not any(token in STOP_IDS or TABLE[token] for token in step[:-1]), step
            assert node.terminal == (step[-1] in STOP_IDS or node.depth == MAX_STEPS)
            assert not (node.terminal and node.children)
        for node in [result.node] + result.found:
            np.testing.assert_allclose(node.completion_logprobs(), model_logprobs(prompt, node.completion()),
                                       atol=1e-4)
        probabilities = [np.exp(np.sum(model_logprobs(prompt, child.step))) for child in result.root.children]
        np.testing.assert_allclose(result.root_priors, np.array(probabilities) / np.sum(probabilities), rtol=1e-3)
        assert len({tuple(child.step) for child in result.root.children}) == len(result.root.children)


def test_terminal_values_are_the_verdicts_and_the_chosen_completion_is_found(counted_search):
    results, _ = counted_search
    for problem, result in enumerate(results):
        assert result.found, "no terminal reached: the test does not exercise terminals"
        for node in result.found:
            text = TOKENIZER.decode(node.completion())
            assert node.value == holds_target(problem, text)
        assert result.finished and result.node in result.found and result.completion == result.node.completion()


def test_greedy_single_expansion_follows_greedy_decoding():
    tokens, mask = left_pad(PROMPT, len(PROMPT), TOKENIZER.pad_id)
    plain = generate_groups(PARAMS, tokens[None], mask[None], jax.random.key(0), CFG,
                            SamplingParams(temperature=0.0, max_new_tokens=MAX_STEPS * STEP_TOKENS), 1, STOP_IDS,
                            TOKENIZER.pad_id)
    want = np.asarray(plain.tokens[0])[np.asarray(plain.completion_mask[0]).astype(bool)].tolist()
    results = search(jax.random.key(5), PRMEvaluator(target_share), GREEDY, expand=2, simulations=MAX_STEPS + 2)
    result = results[0]
    assert result.root_visits == [MAX_STEPS + 1]  # every greedy sample of a leaf is the same step: one child
    assert result.finished and result.completion == want[:len(result.completion)], (result.completion, want)
    assert len(result.completion) > MAX_STEPS  # steps longer than one token: the steps were continued


def test_a_key_fixes_the_search():
    def summary(results):
        return [(result.completion, result.root_visits, result.tokens_generated, result.value,
                 [node.completion() for node in result.found]) for result in results]

    first = search(jax.random.key(0), PRMEvaluator(target_share))
    again = search(jax.random.key(0), PRMEvaluator(target_share))
    assert summary(first) == summary(again)
    for one, other in zip(first, again):
        np.testing.assert_array_equal(one.logprobs, other.logprobs)
    others = [summary(search(jax.random.key(seed), PRMEvaluator(target_share))) for seed in (1, 2)]
    assert any(other != summary(first) for other in others)


def test_search_results_become_sft_rows_that_rlreason_sft_reads(counted_search, tmp_path):
    results, _ = counted_search
    verified = verified_completions(results, TOKENIZER, holds_target)
    for result, completions in zip(results, verified):
        assert completions[0].ids == result.completion  # the chosen completion first
        assert len({completion.text.strip() for completion in completions}) == len(completions)
        for completion in completions:
            assert completion.reward == holds_target(0, completion.text)
    rows = sft_rows(verified, ["what is 6+5?", "what is 3+4?"], ["11", "7"], max_per_prompt=2,
                    provenance={"model": "tiny"})
    want = [(problem, completion.text) for problem, completions in enumerate(verified)
            for completion in [c for c in completions if c.reward >= 1.0][:2]]
    assert want, "no verified completion: the test does not exercise the rows"
    assert [(row["source"]["problem"], row["response"]) for row in rows] == want
    assert all(row["source"]["model"] == "tiny" and row["answer"] in ("11", "7") for row in rows)
    write_rows(tmp_path / "search.jsonl", rows)
    examples = read_sft_examples(str(tmp_path / "search.jsonl"), "prompt", "response")
    assert [(example.prompt, example.response) for example in examples] == [(row["prompt"], row["response"])
                                                                               for row in rows]
    ids, loss_mask = encode_sft_example(examples[0], TOKENIZER, "plain", 64)
    assert sum(loss_mask) > 0
    assert sft_rows(verified, ["q0", "q1"], ["11", "7"], min_reward=2.0) == []
