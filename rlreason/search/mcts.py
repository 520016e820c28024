"""Monte-Carlo tree search over reasoning steps, many problems' trees at once.

A node is a step prefix: the prompt and the steps on its path from the root (the root has no step). Each
simulation round selects one leaf in every tree, expands and evaluates it, and backs its value up the path:
  - selection, from the root down: the child a maximising Q(a) + c_puct * P(a) * sqrt(N(parent)) / (1 + N(a)),
    Q(a) the mean of the values backed up through a (for an unvisited child `first_play`: a number, or
    "parent" for the parent's Q), N visit counts, P the prior;
  - expansion: `expand` next steps of the leaf sampled by the policy (each up to a step delimiter, a stop token
    or `max_step_tokens` tokens); identical samples make one child, whose prior is the policy's probability of
    its step (exp of its summed log-probs) normalised over its siblings;
  - evaluation: a PRM's score of the leaf's tokens, or the mean verdict of `num_rollouts` continuations of the
    leaf to the end. A terminal node (its step ended with a stop token, or it is `max_steps` deep) is scored
    directly (the verifier on its text, or the PRM), once, and never expanded;
  - backup: every node on the path counts one more visit and adds the leaf's value.
The tree bookkeeping is plain Python on the host; the model work of a round (every tree's expansion, then every
tree's rollouts or PRM scores) goes through the compiled sampler in one batch each, its rows split over a mesh
when one is given. Tree t's simulation s draws from fold_in(fold_in(rng, t), s) alone, so a run is reproducible
and a tree's search does not depend on how the batch is split over devices.

`run_search` is the search on callables (no model; tests drive it with hand-made trees); `mcts_search` puts the
policy, the sampler and an evaluator behind them; `verified_completions` and `sft_rows` turn the results into
training data.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from rlreason.config import ModelConfig
from rlreason.parallel.rules import AXIS_RULES, Rules
from rlreason.sampling.sampler import SamplingParams
from rlreason.search.beam import Scorer
from rlreason.search.continuation import continue_sequences, padded_rows
from rlreason.tokenizers import Tokenizer
from rlreason.verifiers.bridge import detokenize

FirstPlay = float | Literal["parent"]
# verify(problem, completion text) -> verdict (1.0 right, 0.0 wrong; any float a reward function returns).
Verify = Callable[[int, str], float]


class Child(NamedTuple):
    """A sampled next step: what an expansion returns for each sample."""

    step: list[int]  # its token ids
    logprobs: np.ndarray  # [len(step)] float32: their log-probs under the sampling policy
    stopped: bool  # a stop token ended it: the completion is over


@dataclasses.dataclass(eq=False)
class Node:
    step: list[int]  # token ids of the step that leads here from the parent ([] at the root)
    logprobs: np.ndarray  # [len(step)] their sampling log-probs
    prior: float
    depth: int  # steps from the root
    terminal: bool
    parent: Node | None = None
    children: list[Node] = dataclasses.field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    value: float | None = None  # the evaluator's value of this node, once it has been evaluated

    @property
    def q(self) -> float:
        return self.value_sum / self.visits

    def path(self) -> list[Node]:
        """The nodes from the root to this one."""
        nodes = [self]
        while nodes[-1].parent is not None:
            nodes.append(nodes[-1].parent)
        return nodes[::-1]

    def completion(self) -> list[int]:
        """The token ids of the steps from the root to here."""
        return [token for node in self.path() for token in node.step]

    def completion_logprobs(self) -> np.ndarray:
        return np.concatenate([node.logprobs for node in self.path()]).astype(np.float32)


class Leaf(NamedTuple):
    """A node selected in tree `tree` (the problem's index) at simulation round `simulation`."""

    tree: int
    simulation: int
    node: Node


# expand(leaves) -> the sampled children of each leaf (at least one each, duplicates allowed).
Expand = Callable[[list[Leaf]], list[list[Child]]]
# evaluate(leaves) -> each leaf's value (terminal leaves included: they are scored directly).
Evaluate = Callable[[list[Leaf]], Sequence[float]]


def puct_scores(priors: np.ndarray, visits: np.ndarray, value_sums: np.ndarray, parent_visits: int,
                c_puct: float, first_play_value: float) -> np.ndarray:
    """Q(a) + c_puct * P(a) * sqrt(N(parent)) / (1 + N(a)) for the K children of one node; priors, visits,
    value_sums [K]; Q(a) = value_sums / visits, or `first_play_value` where a child has no visit yet."""
    visits = np.asarray(visits, np.float64)
    q = np.where(visits > 0, np.asarray(value_sums, np.float64) / np.maximum(visits, 1), first_play_value)
    return q + c_puct * np.asarray(priors, np.float64) * np.sqrt(parent_visits) / (1 + visits)


def select_child(node: Node, c_puct: float, first_play: FirstPlay) -> int:
    """The index of the child of `node` with the highest PUCT score (the first of equals)."""
    first_play_value = node.q if first_play == "parent" else float(first_play)
    scores = puct_scores(np.array([child.prior for child in node.children]),
                         np.array([child.visits for child in node.children]),
                         np.array([child.value_sum for child in node.children]), node.visits, c_puct,
                         first_play_value)
    return int(np.argmax(scores))


def step_priors(children: list[Child]) -> tuple[list[Child], np.ndarray]:
    """The distinct steps of `children` (first occurrences, in order) and their priors [K]: each step's
    probability exp(sum of its log-probs), normalised over them (in log space: long steps underflow)."""
    first: dict[tuple[int, ...], Child] = {}
    for child in children:
        first.setdefault(tuple(child.step), child)
    distinct = list(first.values())
    log_p = np.array([float(np.sum(child.logprobs, dtype=np.float64)) for child in distinct])
    weights = np.exp(log_p - np.max(log_p))
    return distinct, weights / np.sum(weights)


def _attach(node: Node, children: list[Child], max_steps: int) -> None:
    if not children:
        raise ValueError("an expansion returned no child")
    distinct, priors = step_priors(children)
    depth = node.depth + 1
    node.children = [Node(list(child.step), np.asarray(child.logprobs, np.float32), float(prior), depth,
                          child.stopped or depth >= max_steps, parent=node)
                     for child, prior in zip(distinct, priors)]


def _descend(root: Node, c_puct: float, first_play: FirstPlay) -> Node:
    """The leaf PUCT selects: an unexpanded node or a terminal one (an expanded node always has children)."""
    node = root
    while node.children:
        node = node.children[select_child(node, c_puct, first_play)]
    return node


def run_search(num_trees: int, expand: Expand, evaluate: Evaluate, simulations: int, max_steps: int,
               c_puct: float = 1.0, first_play: FirstPlay = 0.0) -> list[Node]:
    """`simulations` rounds of select / expand / evaluate / backup in each of `num_trees` trees; returns their
    roots. Each round makes one `expand` call for the round's non-terminal leaves and one `evaluate` call for the
    leaves not evaluated yet (those and the terminal leaves reached for the first time); a terminal leaf reached
    again backs up its stored value without a call."""
    roots = [Node([], np.zeros(0, np.float32), 1.0, 0, False) for _ in range(num_trees)]
    for simulation in range(simulations):
        leaves = [Leaf(tree, simulation, _descend(root, c_puct, first_play)) for tree, root in enumerate(roots)]
        to_expand = [leaf for leaf in leaves if not leaf.node.terminal]
        to_evaluate = [leaf for leaf in leaves if leaf.node.value is None]
        if to_expand:
            for leaf, children in zip(to_expand, expand(to_expand), strict=True):
                _attach(leaf.node, children, max_steps)
        if to_evaluate:
            for leaf, value in zip(to_evaluate, evaluate(to_evaluate), strict=True):
                leaf.node.value = float(value)
        for leaf in leaves:
            for node in leaf.node.path():
                node.visits += 1
                node.value_sum += leaf.node.value
    return roots


def terminals(root: Node) -> list[Node]:
    """The tree's evaluated terminal nodes, most visited first (ties: in the order they were found)."""
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.terminal and node.value is not None:
            found.append(node)
        stack.extend(reversed(node.children))
    return sorted(found, key=lambda node: -node.visits)


def best_node(root: Node, pick: Literal["visits", "value"] = "visits") -> Node:
    """The node whose completion the search answers with.

    "visits": the end of the most-visited path from the root (through visited children only; ties: the first
    child) when it is terminal;
    otherwise (the search stopped inside the tree) the highest-value terminal. "value": the highest-value
    terminal (ties: the most visited). Without any terminal, the end of the most-visited path."""
    node = root
    while any(child.visits for child in node.children):
        node = max(node.children, key=lambda child: child.visits)
    found = terminals(root)
    if (pick == "visits" and node.terminal) or not found:
        return node
    return max(found, key=lambda candidate: candidate.value)  # `found` is most visited first: ties go to visits


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """One problem's search."""

    completion: list[int]  # the chosen completion's token ids (its stop token included, if it has one)
    logprobs: np.ndarray  # [len(completion)] their sampling log-probs
    value: float  # its evaluator value (a terminal's verdict or PRM score; a non-terminal's own estimate)
    finished: bool  # the completion is a terminal node's
    tokens_generated: int  # tokens the sampler generated for this tree: expansions and rollouts
    root_visits: list[int]  # visit counts of the root's children
    root_priors: list[float]  # their priors
    found: list[Node]  # the evaluated terminal nodes, most visited first
    node: Node  # the chosen completion's node
    root: Node


def finished_nodes(result: SearchResult) -> list[Node]:
    """The search's finished completions' nodes in training order: the chosen one (if finished), then every
    evaluated terminal, most visited first (the chosen one may appear twice: callers drop repeats)."""
    return ([result.node] if result.finished else []) + result.found


@dataclasses.dataclass(frozen=True)
class PRMEvaluator:
    """Values from a process reward model: `score(tokens [R, W], mask [R, W]) -> [R]` on the left-padded prompt
    and partial (or whole) completion, as beam search's `Scorer`."""

    score: Scorer


@dataclasses.dataclass(frozen=True)
class RolloutEvaluator:
    """Values from verified rollouts: a non-terminal leaf is continued `num_rollouts` times by the policy (to a
    stop token, at most `max_new_tokens` each) and valued by the mean of `verify` on the leaf's steps and each
    continuation decoded together; a terminal leaf is valued by `verify` on its own text."""

    verify: Verify
    num_rollouts: int
    max_new_tokens: int


def _leaf_keys(rng: jax.Array, leaves: list[Leaf], purpose: int) -> jax.Array:
    """[R] keys fold_in(fold_in(fold_in(rng, tree), simulation), purpose): 0 expands, 1 rolls out."""
    trees = np.array([leaf.tree for leaf in leaves], np.uint32)
    rounds = np.array([leaf.simulation for leaf in leaves], np.uint32)
    fold = jax.random.fold_in
    return jax.vmap(lambda tree, simulation: fold(fold(fold(rng, tree), simulation), purpose))(trees, rounds)


def mcts_search(params, cfg: ModelConfig, tokenizer: Tokenizer, prompts: list[list[int]],
                evaluator: PRMEvaluator | RolloutEvaluator, is_delimiter: np.ndarray, simulations: int, expand: int,
                max_steps: int, max_step_tokens: int, sampling: SamplingParams, rng: jax.Array,
                c_puct: float = 1.0, first_play: FirstPlay = 0.0, pick: Literal["visits", "value"] = "visits",
                mesh: Mesh | None = None, rules: Rules = AXIS_RULES) -> list[SearchResult]:
    """MCTS for each of P prompts (token ids, templated), one tree each, searched together.

    `is_delimiter` [V] bool (`steps.delimiter_table`): the tokens that end a step. `sampling` gives the policy's
    temperature / top-k / top-p (its max_new_tokens is ignored: `max_step_tokens` bounds a step, the evaluator a
    rollout). `mesh`: split the sampler's rows over its batch axes by `rules` (params placed by the caller).
    """
    stop_ids = tuple(tokenizer.stop_ids)
    step_stops = stop_ids + tuple(int(token) for token in np.flatnonzero(is_delimiter))
    width = max(map(len, prompts)) + max_steps * max_step_tokens
    spent = np.zeros(len(prompts), np.int64)

    def sample(leaves: list[Leaf], purpose: int, max_new_tokens: int, group_size: int,
               stops: tuple[int, ...]) -> list[list[list[int]]]:
        """`group_size` continuations of each leaf (ids, log-probs), counted in `spent`."""
        continuations = continue_sequences(
            params, cfg, [prompts[leaf.tree] + leaf.node.completion() for leaf in leaves], width,
            _leaf_keys(rng, leaves, purpose), dataclasses.replace(sampling, max_new_tokens=max_new_tokens),
            group_size, stops, tokenizer.pad_id, mesh, rules)
        groups = [continuations[index * group_size:(index + 1) * group_size] for index in range(len(leaves))]
        for leaf, group in zip(leaves, groups):
            spent[leaf.tree] += sum(len(continuation.ids) for continuation in group)
        return groups

    def expand_leaves(leaves: list[Leaf]) -> list[list[Child]]:
        return [[Child(step.ids, step.logprobs, bool(step.ids) and step.ids[-1] in stop_ids) for step in group]
                for group in sample(leaves, 0, max_step_tokens, expand, step_stops)]

    def text(ids: list[int]) -> str:
        return detokenize(tokenizer, np.asarray(ids, np.int64), np.ones(len(ids), bool))

    def evaluate_leaves(leaves: list[Leaf]) -> list[float]:
        if isinstance(evaluator, PRMEvaluator):
            rows = padded_rows([prompts[leaf.tree] + leaf.node.completion() for leaf in leaves], width,
                               tokenizer.pad_id)
            return [float(value) for value in np.asarray(evaluator.score(*rows))]
        values = {id(leaf.node): float(evaluator.verify(leaf.tree, text(leaf.node.completion())))
                  for leaf in leaves if leaf.node.terminal}
        open_leaves = [leaf for leaf in leaves if not leaf.node.terminal]
        if open_leaves:
            groups = sample(open_leaves, 1, evaluator.max_new_tokens, evaluator.num_rollouts, stop_ids)
            for leaf, group in zip(open_leaves, groups):
                verdicts = [evaluator.verify(leaf.tree, text(leaf.node.completion() + rollout.ids))
                            for rollout in group]
                values[id(leaf.node)] = float(np.mean(verdicts))
        return [values[id(leaf.node)] for leaf in leaves]

    roots = run_search(len(prompts), expand_leaves, evaluate_leaves, simulations, max_steps, c_puct, first_play)
    results = []
    for root, tokens_generated in zip(roots, spent):
        chosen = best_node(root, pick)
        value = chosen.value if chosen.value is not None else chosen.q
        results.append(SearchResult(chosen.completion(), chosen.completion_logprobs(), float(value), chosen.terminal,
                                    int(tokens_generated), [child.visits for child in root.children],
                                    [child.prior for child in root.children], terminals(root), chosen, root))
    return results


class Verified(NamedTuple):
    """A distinct finished completion a search found, with its verdict: what expert iteration (SFT) and GRPO
    read. `logprobs` are the sampler's, under the search's sampling temperature (GRPO's pi_old)."""

    ids: list[int]
    logprobs: np.ndarray  # [len(ids)] float32
    text: str
    reward: float
    visits: int


def verified_completions(results: list[SearchResult], tokenizer: Tokenizer, verify: Verify) -> list[list[Verified]]:
    """Per problem: the chosen completion (if finished) then the other terminal completions, most visited first,
    one per distinct text (stripped), each with `verify`'s verdict (PRM-valued searches never verified them)."""
    per_problem = []
    for problem, result in enumerate(results):
        seen, kept = set(), []
        for node in finished_nodes(result):
            ids = node.completion()
            text = detokenize(tokenizer, np.asarray(ids, np.int64), np.ones(len(ids), bool))
            if text.strip() not in seen:
                seen.add(text.strip())
                kept.append(Verified(ids, node.completion_logprobs(), text, float(verify(problem, text)),
                                     node.visits))
        per_problem.append(kept)
    return per_problem


def sft_rows(verified: list[list[Verified]], questions: list[str], golds: list[str], max_per_prompt: int = 1,
             min_reward: float = 1.0, provenance: dict | None = None) -> list[dict]:
    """Expert-iteration rows in `rlreason generate`'s format (`rlreason sft` reads prompt and response): for each
    problem, its first `max_per_prompt` completions with reward >= `min_reward`, in `verified_completions`'
    order. `questions`: untemplated (SFT applies the template); `provenance` goes into each row's source."""
    rows = []
    for problem, completions in enumerate(verified):
        kept = [completion for completion in completions if completion.reward >= min_reward][:max_per_prompt]
        rows += [{"prompt": questions[problem], "response": completion.text, "answer": golds[problem],
                  "reward": completion.reward, "length": len(completion.ids),
                  "source": {**(provenance or {}), "search": "mcts", "problem": problem, "visits": completion.visits}}
                 for completion in kept]
    return rows
