"""Tools a policy calls from inside its completion, and the tool turns of the compiled sampler.

A call is a tag pair in the completion, `<calc>3*(4+5)</calc>`; once the policy's tokens close it, the sampler
pauses that row, the host runs the tool on the text between the tags, and the result's tokens, those of
`<result>27</result>`, are inserted into the row as if sampled (teacher-forced through the KV cache, one per
decode iteration), after which the policy goes on. The policy's own tokens are never re-tokenized: the host only
decodes them to find the call, and only the observation text is tokenized.

The registry (`TOOLS`): name -> `Tool`, whose `run(argument text) -> result text` never raises; failures come
back as text starting with "error:", which the policy reads like any other result.

Device side (`TurnState`, `force_observations`, `queue_observations`): each row carries a queue of observation
tokens still to insert. The host is asked only on a decode iteration where some row's new policy token is one
whose piece holds '>' (a device-side table over the vocabulary), it has calls left and there is room after it;
the host decodes the row's tokens since its last observation and answers the first closing tag of an enabled
tool there. Every closing tag it sees is answered (one without its opening tag with an error), so the text since
the last observation never holds an answered call. The host step runs as a `jax.pure_callback`, which XLA
places on one device: under a mesh every row's call is run by the host of that device.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlreason.config import ConfigError, ToolsConfig
from rlreason.tokenizers.base import Tokenizer
from rlreason.verifiers.bridge import detokenize
from rlreason.verifiers.sandbox import SandboxLimits, SandboxUnavailable, run_python

OBSERVATION_OPEN, OBSERVATION_CLOSE = "<result>", "</result>"
# The character every closing tag ends with: only a token whose piece holds it can close a call.
CLOSING_CHAR = ">"


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    tag: str  # the call is <tag>argument</tag>
    run: Callable[[str, float], str]  # (argument, timeout_s) -> result text; never raises
    description: str


# ---------------------------------------------------------------------------------------------- calculator

CALC_MAX_CHARS = 200
CALC_MAX_BITS = 4096  # the largest integer a step of the calculation may make (so 9**9**9 is refused, not run)
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(ValueError):
    """The expression is not arithmetic the calculator does, or its value is not a finite number."""


def _bits(value) -> float:
    return abs(value).bit_length() if isinstance(value, int) else math.log2(abs(value) + 1)


def _evaluate(node: ast.AST):
    """The value of an arithmetic syntax tree: numbers, + - * / // % **, unary signs. Anything else is refused."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and _bits(left) * abs(right) > CALC_MAX_BITS and abs(left) > 1:
            raise CalcError("number too large")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except OverflowError:
            raise CalcError("number too large") from None
        if isinstance(value, complex):
            raise CalcError("not a real number")
        if _bits(value) > CALC_MAX_BITS:
            raise CalcError("number too large")
        return value
    raise CalcError("only numbers, + - * / // % ** and parentheses are allowed")


def calculate(expression: str) -> str:
    """The value of an arithmetic expression as text; raises CalcError. Python's syntax and semantics for
    numbers, parsed by `ast` and walked here: nothing is evaluated as code."""
    if len(expression) > CALC_MAX_CHARS:
        raise CalcError(f"expression longer than {CALC_MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalcError("not an arithmetic expression") from None
    value = _evaluate(tree)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalcError("not a finite number")
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else format(value, ".12g")
    return str(value)


def calculator(argument: str, timeout_s: float) -> str:
    del timeout_s  # bounded by CALC_MAX_CHARS and CALC_MAX_BITS instead
    try:
        return calculate(argument)
    except CalcError as error:
        return f"error: {error}"


# ---------------------------------------------------------------------------------------------- python


def python(argument: str, timeout_s: float) -> str:
    """What the program printed, run in the code-reward sandbox (rlreason.verifiers.sandbox); an error's last
    line of stderr when it failed."""
    limits = SandboxLimits(wall_s=timeout_s, cpu_s=max(1, math.ceil(timeout_s)))
    run = run_python(argument, limits)
    if run.timed_out:
        return f"error: timed out after {timeout_s:g} s"
    if run.overflowed:
        return "error: printed too much"
    if run.exit_code != 0:
        last = run.stderr.strip().splitlines()[-1:] or [f"exit code {run.exit_code}"]
        return f"error: {last[0]}"
    return run.stdout.strip()


TOOLS: dict[str, Tool] = {
    "calc": Tool("calc", "calc", calculator, "arithmetic on numbers: + - * / // % ** and parentheses"),
    "python": Tool("python", "python", python, "a Python program, run in the sandbox; its printed output"),
}


def find_call(text: str, tools: tuple[Tool, ...]) -> tuple[Tool, str] | None:
    """The first call `text` closes: (tool, the text between its tags, or None where the closing tag has no opening
    tag before it), or None when no enabled tool's closing tag is in it."""
    closings = [(text.find(f"</{tool.tag}>"), tool) for tool in tools]
    closings = [(position, tool) for position, tool in closings if position >= 0]
    if not closings:
        return None
    position, tool = min(closings, key=lambda found: found[0])
    opening = text.rfind(f"<{tool.tag}>", 0, position)
    return tool, (None if opening < 0 else text[opening + len(tool.tag) + 2:position])


def answer(tool: Tool, argument: str | None, timeout_s: float) -> str:
    """The result text of one call; never raises."""
    if argument is None:
        return f"error: </{tool.tag}> without <{tool.tag}>"
    try:
        return tool.run(argument, timeout_s)
    except Exception as error:  # noqa: BLE001 (a tool's failure is the policy's observation, not the run's end)
        return f"error: {type(error).__name__}: {error}"


# ---------------------------------------------------------------------------------------------- tool turns


class ToolTurns:
    """The host side of a run's tool turns: its tools, tokenizer and limits. Static in the compiled sampler (it
    hashes by identity), so build one per run (`make_tool_turns`)."""

    def __init__(self, tools: tuple[Tool, ...], tokenizer: Tokenizer, max_calls: int, max_observation_tokens: int,
                 timeout_s: float):
        self.tools, self.tokenizer = tools, tokenizer
        self.max_calls, self.max_observation_tokens, self.timeout_s = max_calls, max_observation_tokens, timeout_s
        framing = len(tokenizer.encode(OBSERVATION_OPEN + OBSERVATION_CLOSE))
        if framing >= max_observation_tokens:
            raise ConfigError(f"config key 'sampling.tools.max_observation_tokens' must be > {framing}, the tokens "
                              f"of {OBSERVATION_OPEN + OBSERVATION_CLOSE!r} alone, got {max_observation_tokens}")
        stops = set(tokenizer.stop_ids)
        # [V] bool: the tokens whose piece holds CLOSING_CHAR, so that may close a call.
        self.closing_pieces = np.asarray([token not in stops and CLOSING_CHAR in tokenizer.decode([token])
                                          for token in range(tokenizer.vocab_size)], bool)

    def closing_table(self, vocab_size: int) -> jax.Array:
        """The table over a model vocabulary of `vocab_size` ids [V] bool; ids past the tokenizer's close nothing."""
        return jnp.asarray(np.pad(self.closing_pieces, (0, max(vocab_size - len(self.closing_pieces), 0))))

    def observation_ids(self, result: str) -> list[int]:
        """Tokens of `<result>RESULT</result>`, the result cut (and marked "...") until they fit
        max_observation_tokens."""
        ids = self.tokenizer.encode(OBSERVATION_OPEN + result + OBSERVATION_CLOSE)
        keep = len(result)
        while len(ids) > self.max_observation_tokens:
            keep = max(min(keep - 1, keep * self.max_observation_tokens // len(ids)), 0)
            ids = self.tokenizer.encode(OBSERVATION_OPEN + result[:keep] + "..." + OBSERVATION_CLOSE)
            if keep == 0:
                ids = ids[:self.max_observation_tokens]
        return ids

    def observe(self, tokens: np.ndarray, observation_mask: np.ndarray, index: np.ndarray,
                candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The host step: tokens, observation_mask [B, Tc] (slots up to `index` filled), candidates [B] bool (rows
        whose token `index` may have closed a call). Returns (observation tokens [B, O] int32, their count [B]
        int32, 0 where a row closed no call); a count is cut to the room left after slot `index`."""
        rows, width = tokens.shape
        end = int(index) + 1
        observations = np.zeros((rows, self.max_observation_tokens), np.int32)
        counts = np.zeros((rows,), np.int32)
        for row in np.flatnonzero(candidates):
            inserted = np.flatnonzero(observation_mask[row, :end])
            start = inserted[-1] + 1 if len(inserted) else 0
            segment = tokens[row, start:end]
            call = find_call(detokenize(self.tokenizer, segment, np.ones_like(segment)), self.tools)
            if call is None:
                continue
            ids = self.observation_ids(answer(*call, self.timeout_s))[:width - end]
            observations[row, :len(ids)] = ids
            counts[row] = len(ids)
        return observations, counts


def make_tool_turns(cfg: ToolsConfig, tokenizer: Tokenizer) -> ToolTurns | None:
    """The run's tool turns from sampling.tools, or None when no tool is enabled. Checks that the sandbox works
    when the python tool is enabled, before anything compiles."""
    if not cfg.enabled:
        return None
    if "python" in cfg.enabled:
        try:
            run_python("pass", SandboxLimits(wall_s=cfg.timeout_s))
        except SandboxUnavailable as error:
            raise ConfigError(f"config key 'sampling.tools.enabled' names 'python', which runs in the code sandbox: "
                              f"{error}") from None
    return ToolTurns(tuple(TOOLS[name] for name in cfg.enabled), tokenizer, cfg.max_calls, cfg.max_observation_tokens,
                     cfg.timeout_s)


class TurnState(NamedTuple):
    """The decode loop's tool-turn state. observation_mask: [B, Tc] bool, the slots that hold inserted tokens.
    queue: [B, O] int32, the current observation; queued: [B] its length; position: [B] how much of it is
    inserted; calls: [B] calls answered so far."""

    observation_mask: jax.Array
    queue: jax.Array
    queued: jax.Array
    position: jax.Array
    calls: jax.Array


def initial_turns(batch: int, max_new: int, turns: ToolTurns) -> TurnState:
    zeros = jnp.zeros((batch,), jnp.int32)
    return TurnState(jnp.zeros((batch, max_new), bool), jnp.zeros((batch, turns.max_observation_tokens), jnp.int32),
                     zeros, zeros, zeros)


def force_observations(state: TurnState, sampled: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(token [B], forced [B] bool): the next queued observation token where a row has one, else `sampled`."""
    forced = state.position < state.queued
    queued = jnp.take_along_axis(state.queue, jnp.minimum(state.position, state.queue.shape[1] - 1)[:, None], 1)
    return jnp.where(forced, queued[:, 0], sampled), forced


def queue_observations(state: TurnState, turns: ToolTurns, closing: jax.Array, tokens: jax.Array, index: jax.Array,
                       inserted: jax.Array, open_policy_token: jax.Array) -> TurnState:
    """The state after slot `index` of `tokens` [B, Tc] was written: `inserted` [B] where it got an observation
    token, `open_policy_token` [B] where it got a policy token that did not end its row. Asks the host for
    observations when one of those tokens may have closed a call. `closing`: [V] bool, `ToolTurns.closing_table`."""
    observation_mask = state.observation_mask.at[:, index].set(inserted)
    position = state.position + inserted
    candidates = (open_policy_token & closing[tokens[:, index]] & (state.calls < turns.max_calls)
                  & (index + 1 < tokens.shape[1]))
    shapes = (jax.ShapeDtypeStruct(state.queue.shape, jnp.int32), jax.ShapeDtypeStruct(state.queued.shape, jnp.int32))

    def ask_host(args):
        return jax.pure_callback(turns.observe, shapes, *args)

    def nothing_closed(args):
        return jnp.zeros_like(state.queue), jnp.zeros_like(state.queued)

    queue, count = jax.lax.cond(jnp.any(candidates), ask_host, nothing_closed,
                                (tokens, observation_mask, index, candidates))
    answered = candidates & (count > 0)
    return TurnState(observation_mask, jnp.where(answered[:, None], queue, state.queue),
                     jnp.where(answered, count, state.queued), jnp.where(answered, 0, position),
                     state.calls + answered)


def tool_metrics(observation_mask: jax.Array, completion_mask: jax.Array) -> dict[str, jax.Array]:
    """Per-row means of a rollout's tool use; observation_mask, completion_mask: [B, Tc]."""
    inserted = observation_mask.astype(jnp.float32)
    starts = inserted[:, :1] + jnp.sum(jnp.maximum(inserted[:, 1:] - inserted[:, :-1], 0), axis=1, keepdims=True)
    return {"tools/calls": jnp.mean(starts), "tools/observation_tokens": jnp.mean(jnp.sum(inserted, axis=1)),
            "tools/policy_length": jnp.mean(jnp.sum(completion_mask * (1 - inserted), axis=1))}
