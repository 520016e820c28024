"""Tool calls inside the compiled sampler: the calculator and the python tool, the tool-turn config, and a scripted
tiny transformer (tests/sampling/scripted.py) that calls the calculator, whose result must be inserted as
exactly the tokens of `<result>5</result>`, marked as observations, kept out of the GRPO loss, while the policy's
own log-probs still equal a full forward pass."""

import os
import typing

import jax
import numpy as np
import pytest

from rlreason.config import ConfigError, ToolName, load_config
from rlreason.models.logprobs import completion_logprobs
from rlreason.sampling.sampler import SamplingParams, generate
from rlreason.sampling.tools import TOOLS, ToolTurns, answer, calculator, find_call, make_tool_turns, python
from scripted import (AFTER_RESULT, CALL, CFG, EOS, ID, NO_CALL, PIECES, PieceTokenizer, prompts, scripted_grpo,
                      scripted_params)

TOKENIZER = PieceTokenizer()
generate_jit = jax.jit(generate, static_argnames=("cfg", "sampling", "pad_id", "group_size", "tools"))
GREEDY = SamplingParams(max_new_tokens=20, temperature=0.0)


def turns(max_calls=4, max_observation_tokens=8, tools=("calc",)) -> ToolTurns:
    return ToolTurns(tuple(TOOLS[name] for name in tools), TOKENIZER, max_calls, max_observation_tokens, 5.0)


def ids(*pieces: str) -> list[int]:
    return [ID[piece] for piece in pieces]


def rollout(params, firsts, tools, sampling=GREEDY):
    tokens, mask = prompts(*firsts)
    stops = np.full((len(firsts), 1), EOS, np.int32)
    return jax.device_get(generate_jit(params, tokens, mask, stops, jax.random.key(0), cfg=CFG, sampling=sampling,
                                       tools=tools))


def written(roll, row) -> list[int]:
    return roll.tokens[row][roll.completion_mask[row] > 0].tolist()


def test_the_registry_holds_the_configs_tool_names():
    assert set(TOOLS) == set(typing.get_args(ToolName))
    assert all(tool.name == name for name, tool in TOOLS.items())


@pytest.mark.parametrize("expression, result", [
    ("3*(4+5)", "27"), ("2**10", "1024"), ("10/4", "2.5"), ("10/2", "5"), ("7//2", "3"), ("-7 % 3", "2"),
    (" -3 + +5 ", "2"), ("2**-1", "0.5"), ("1.5e3 * 2", "3000"), ("10**20", "100000000000000000000"),
    ("1/3", "0.333333333333"),
    ("1/0", "error: division by zero"), ("5 % 0", "error: division by zero"), ("9**9**9", "error: number too large"),
    ("(-8)**0.5", "error: not a real number"), ("1e308 * 10", "error: number too large"),
    ("2 +", "error: not an arithmetic expression"), ("", "error: not an arithmetic expression"),
    ("x + 1", "error: only numbers, + - * / // % ** and parentheses are allowed"),
    ("True + 1", "error: only numbers, + - * / // % ** and parentheses are allowed"),
    ("'a' * 3", "error: only numbers, + - * / // % ** and parentheses are allowed"),
    ("[1, 2]", "error: only numbers, + - * / // % ** and parentheses are allowed"),
    ("1" * 201, "error: expression longer than 200 characters"),
])
def test_calculator(expression, result):
    assert calculator(expression, 1.0) == result


def test_calculator_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    for attack in (f"__import__('os').system('touch {marker}')", f"open('{marker}', 'w')",
                   "(lambda: 1)()", "().__class__.__bases__[0].__subclasses__()", "print(1)", "2 if 1 else 3"):
        assert calculator(attack, 1.0).startswith("error: "), attack
    assert not marker.exists()


def test_python_tool_prints_the_programs_output_and_its_error_in_the_sandbox():
    assert python("print(2**10)", 5.0) == "1024"
    assert python("import os\nprint(os.path.exists(%r))" % os.path.abspath(__file__), 5.0) == "False"
    assert python("1/0", 5.0) == "error: ZeroDivisionError: division by zero"
    assert python("while True: pass", 1.0) == "error: timed out after 1 s"


def test_the_first_closing_tag_is_the_call_and_one_without_opening_is_answered_with_an_error():
    tools = (TOOLS["calc"], TOOLS["python"])
    assert find_call("so <calc>1+1</calc> and <python>print(3)</python>", tools) == (TOOLS["calc"], "1+1")
    assert find_call("<answer>4</answer> a > b", tools) is None
    tool, argument = find_call("1+1</calc>", tools)
    assert answer(tool, argument, 1.0) == "error: </calc> without <calc>"


def test_a_long_result_is_cut_to_max_observation_tokens():
    tool_turns = turns(max_observation_tokens=8)
    assert tool_turns.observation_ids("27") == ids("<result>", "2", "7", "</result>")
    cut = tool_turns.observation_ids("1234567890")
    assert len(cut) == 8 and TOKENIZER.decode(cut) == "<result>123...</result>"
    with pytest.raises(ConfigError, match="'sampling.tools.max_observation_tokens' must be > 2"):
        turns(max_observation_tokens=2)


def test_scripted_model_calls_the_calculator_and_gets_the_result_tokens():
    params = scripted_params()
    plain = rollout(params, ("Q", "R"), None)
    assert written(plain, 0) == ids("<calc>", "2", "+", "3", "</calc>", "7", "<eos>")  # the model's own guess
    assert not plain.observation_mask.any()

    roll = rollout(params, ("Q", "R", "Q"), turns())
    observation = ids("<result>", "5", "</result>")
    assert observation == TOKENIZER.encode("<result>5</result>")
    for row in (0, 2):
        assert written(roll, row) == ids(*CALL) + observation + ids(*AFTER_RESULT)
        expected_mask = np.zeros(GREEDY.max_new_tokens, np.int32)
        expected_mask[len(CALL):len(CALL) + len(observation)] = 1
        np.testing.assert_array_equal(roll.observation_mask[row], expected_mask)
    assert written(roll, 1) == ids(*NO_CALL, "5", "</answer>", "<eos>") and not roll.observation_mask[1].any()
    assert not roll.truncated.any()
    assert np.all(roll.logprobs[roll.observation_mask > 0] == 0)

    # The policy's tokens, read after the inserted ones, by one forward pass over prompt + completion.
    full = np.asarray(completion_logprobs(params, roll.prompt_tokens, roll.prompt_mask, roll.tokens, CFG, 1.0))
    policy = (roll.completion_mask > 0) & (roll.observation_mask == 0)
    assert np.all(roll.logprobs[policy] < -0.05)  # not saturated: the context moves them
    np.testing.assert_allclose(roll.logprobs[policy], full[policy], atol=1e-5)


def test_calls_stop_at_max_calls_and_results_at_the_completion_budget():
    params = scripted_params(calls_again=True)
    observation = ids("<result>", "5", "</result>")
    roll = rollout(params, ("Q",), turns(max_calls=2), SamplingParams(max_new_tokens=40, temperature=0.0))
    assert written(roll, 0) == (ids(*CALL) + observation) * 2 + ids(*CALL, "7", "<eos>")
    assert roll.observation_mask[0].sum() == 2 * len(observation)

    short = rollout(params, ("Q",), turns(), SamplingParams(max_new_tokens=len(CALL) + 2, temperature=0.0))
    assert written(short, 0) == ids(*CALL) + observation[:2] and short.truncated[0]
    assert short.observation_mask[0].tolist() == [0] * len(CALL) + [1, 1]


def test_without_tools_the_sampler_has_no_host_call():
    tokens, mask = prompts("Q")
    program = str(jax.make_jaxpr(lambda p: generate(p, tokens, mask, np.full((1, 1), EOS, np.int32),
                                                     jax.random.key(0), CFG, GREEDY))(scripted_params()))
    assert "callback" not in program
    with_tools = str(jax.make_jaxpr(lambda p: generate(p, tokens, mask, np.full((1, 1), EOS, np.int32),
                                                        jax.random.key(0), CFG, GREEDY, tools=turns()))(
        scripted_params()))
    assert "pure_callback" in with_tools


def test_the_grpo_loss_leaves_observation_tokens_out():
    functions, state, batch = scripted_grpo(turns(), SamplingParams(max_new_tokens=20, temperature=1.0), margin=7.0)
    # Sampled, so that the rows of a group differ and their gradients do not cancel.
    roll = jax.jit(functions.rollout)(functions.policy(state), batch("Q", "Q", "R"), jax.random.key(1))
    observations = np.asarray(roll.observation_mask) > 0
    calls = np.sum(np.diff(observations.astype(int), axis=1, prepend=0) == 1)
    assert calls >= 2 and observations.sum() >= 3 * calls - 1  # whole results (one may be cut by the budget)
    rewards = np.tile(np.asarray([[1, 1, 1], [0, 0, 0]], np.float32), (3, 1))  # advantages != 0 in every group
    learn = jax.jit(functions.learn)

    def learned(logprobs):
        new_state, metrics, _ = learn(state, roll._replace(logprobs=logprobs), rewards)
        return jax.device_get(new_state.params), jax.device_get(metrics)

    params, metrics = learned(roll.logprobs)
    assert metrics["loss_tokens"] == np.asarray(roll.completion_mask).sum() - observations.sum()
    np.testing.assert_allclose(metrics["tools/calls"], calls / 6)
    np.testing.assert_allclose(metrics["tools/observation_tokens"], observations.sum() / 6)
    assert metrics["grad_norm"] > 1e-3
    # pi_old at an observation slot weighs nothing; at a policy slot it changes the update.
    params_obs, _ = learned(np.where(observations, -3.0, roll.logprobs))
    params_policy, _ = learned(np.where(np.arange(roll.tokens.shape[1]) == 1, -3.0, roll.logprobs))
    for a, b, c in zip(jax.tree.leaves(params), jax.tree.leaves(params_obs), jax.tree.leaves(params_policy)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, c) for a, c in zip(jax.tree.leaves(params), jax.tree.leaves(params_policy)))


@pytest.mark.parametrize("override, key", [
    ("sampling.tools.enabled=[calc, shell]", "sampling.tools.enabled[1]"),
    ("sampling.tools.enabled=[calc, calc]", "sampling.tools.enabled"),
    ("sampling.tools.max_calls=0", "sampling.tools.max_calls"),
    ("sampling.tools.max_observation_tokens=0", "sampling.tools.max_observation_tokens"),
    ("sampling.tools.max_observation_tokens=64", "sampling.tools.max_observation_tokens"),
    ("sampling.tools.timeout_s=0", "sampling.tools.timeout_s"),
    ("sampling.tools.max_turns=2", "sampling.tools.max_turns"),
])
def test_bad_tool_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key.replace('[', '.').replace(']', '.')}'"):
        load_config(None, ["sampling.tools.enabled=[calc]", override])


def test_no_tool_enabled_makes_no_tool_turns():
    assert make_tool_turns(load_config().sampling.tools, TOKENIZER) is None
    tool_turns = make_tool_turns(load_config(None, ["sampling.tools.enabled=[calc]"]).sampling.tools, TOKENIZER)
    assert [tool.name for tool in tool_turns.tools] == ["calc"]
    assert [PIECES[i] for i in np.flatnonzero(tool_turns.closing_pieces)] == [
        "<calc>", "</calc>", "<result>", "</result>", "<answer>", "</answer>"]


def test_evaluation_and_rlreason_sample_call_the_runs_tools():
    """A policy trained with tools is evaluated with them: the evaluator's and `rlreason sample`'s samples get the
    result inserted, and the answer after it is scored."""
    from tiny_run import tiny_config

    from rlreason.config import RewardConfig
    from rlreason.data.encoding import encode_rows
    from rlreason.data.eval_sets import EvalSet
    from rlreason.data.sources import Example
    from rlreason.parallel.mesh import make_mesh
    from rlreason.parallel.rules import axis_rules
    from rlreason.train.commands import sample_texts
    from rlreason.train.evaluate import Evaluator

    cfg = tiny_config("sampling.tools.enabled=[calc]", "sampling.tools.max_observation_tokens=8",
                      "sampling.temperature=0", "eval.temperature=0", "eval.num_samples=1", "tokenizer.template=plain")
    expected = "<calc>2+3</calc><result>5</result><answer>5</answer>"
    params = scripted_params()
    assert sample_texts(params, CFG, TOKENIZER, ["Q"], cfg, seed=0) == [expected]
    prompts_set = encode_rows([Example("Q", "5")], cfg.task, TOKENIZER, "plain", cfg.sampling.max_prompt_length, "Q")
    eval_set = EvalSet("calls", prompts_set, (RewardConfig("exact_answer"),), "exact_answer")
    evaluator = Evaluator(cfg, CFG, TOKENIZER, make_mesh(cfg.mesh), axis_rules(cfg.mesh), [eval_set])
    result = evaluator.evaluate(params, eval_set)
    assert [row["completion"] for row in result.rows] == [expected]
    assert result.summary["pass@1"] == 1.0
