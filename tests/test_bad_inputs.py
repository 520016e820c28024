"""Bad input is refused before anything expensive, with an error that names the problem and the fix.

One table row per bad input: how to provoke it, the error type, and text the message must hold. A row's
`prepare(inputs)` writes whatever bad files it needs and returns an `Attempt`: the library call that must fail,
and the same input as a command line. Config rows only load the config; run rows call `train` itself and must
fail before the first step, leaving no out_dir behind (not even an empty one). Rows that resume work on a copy
of a run with two checkpoints, and a refused resume must leave every checkpoint file exactly as it was.

Through the command line every row must end with `rlreason train: error: <the message>` on stderr, exit code 2
and no traceback. Config rows run `main()` in this process; run rows run `python -m rlreason` as a child, so
that whatever the run leaves running (orbax's threads, verifier workers) has to shut down quietly too. Each
child costs an interpreter and a JAX start, so the default run takes one row per kind of failure (a model
directory, the data, a checkpoint restore, the mesh, a reward name, an earlier run in out_dir) and the rest
are `slow`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import jax
import pytest
import sentencepiece as spm
import yaml

from tiny_run import TINY_OVERRIDES, tiny_config
from rlreason.cli import main
from rlreason.config import ConfigError, load_config
from rlreason.data.bad_rows import BadRowsError
from rlreason.models.store import ModelDirError
from rlreason.parallel.rules import AXIS_RULES
from rlreason.tokenizers import TokenizerError
from rlreason.train.checkpoint import CheckpointError, RunCheckpoints
from rlreason.train.loop import build_trainer, train
from rlreason.train.preflight import check_batch_geometry

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "demo_cpu.yaml")
CHILD_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a row may break: a copy of the tiny model, a run with checkpoints, files it writes under `tmp`."""

    tmp: Path
    model: Path
    run: Path  # out_dir of a run with checkpoints 1 and 2 (copied per row)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """A bad input, given to the library (`call` must raise) and to the command line (`argv`, for `rlreason`)."""

    call: Callable[[], object]
    argv: list[str]


Prepare = Callable[[Inputs], Attempt]


def in_child(prepare: Prepare) -> Prepare:
    """Marks a row whose command line gets past the config load: the CLI test runs it as a child process."""
    prepare.in_child = True
    return prepare


def config(*overrides: str) -> Prepare:
    return lambda inputs: Attempt(lambda: tiny_config(*overrides), ["train", CONFIG, *TINY_OVERRIDES, *overrides])


def run(*overrides: str | Callable[[Inputs], str], resume: bool = False) -> Prepare:
    """`train` on the tiny model, into a fresh out_dir (or the run with checkpoints, `resume`). An override may
    be a function of the inputs that prepares a bad file and names it."""
    def prepare(inputs: Inputs) -> Attempt:
        out_dir = inputs.run if resume else inputs.tmp / "out"
        resolved = [item(inputs) if callable(item) else item for item in overrides]
        settings = [f"train.model_dir={inputs.model}", f"train.out_dir={out_dir}", *resolved]
        cfg = tiny_config(*settings)
        return Attempt(lambda: train(cfg, show_progress=False),
                       ["train", CONFIG, *TINY_OVERRIDES, *settings, "--quiet"])
    return in_child(prepare)


def jsonl_file(name: str, lines: list[str]) -> Callable[[Inputs], str]:
    def write(inputs: Inputs) -> str:
        path = inputs.tmp / name
        path.write_text("".join(line + "\n" for line in lines))
        return str(path)
    return write


GOOD_ROWS = [json.dumps({"question": f"What is {a}+{a}?", "answer": str(2 * a)}) for a in range(4)]


def jsonl_task(*lines: str):
    return ("task.name=jsonl", lambda inputs: f"task.path={jsonl_file('train.jsonl', [*GOOD_ROWS, *lines])(inputs)}",
            lambda inputs: f"task.eval_path={jsonl_file('eval.jsonl', GOOD_ROWS)(inputs)}")


def model_without_weights(inputs: Inputs) -> str:
    shutil.rmtree(inputs.model / "params")
    return f"train.model_dir={inputs.model}"


def model_with_invalid_config(inputs: Inputs) -> str:
    meta = yaml.safe_load((inputs.model / "model.yaml").read_text())
    meta["model"]["num_kv_heads"] = 3
    (inputs.model / "model.yaml").write_text(yaml.safe_dump(meta))
    return f"train.model_dir={inputs.model}"


def model_with_tokenizer_lacking_r1_tags(inputs: Inputs) -> str:
    """The model's tokenizer replaced by one trained on text without '<' or '>': it cannot write <think>."""
    corpus = [f"User: What is {a}+{b}?\nAssistant: {a + b}" for a in range(10) for b in range(10)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, model_type="bpe",
                                   vocab_size=40, hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   minloglevel=2)
    (inputs.model / "tokenizer.model").write_bytes(model.getvalue())
    return f"train.model_dir={inputs.model}"


def checkpoint_dir_is_a_file(inputs: Inputs) -> str:
    (inputs.tmp / "checkpoints-file").write_text("not a directory")
    return f"checkpoint.dir={inputs.tmp / 'checkpoints-file'}"


def empty_checkpoint_dir(inputs: Inputs) -> str:
    (inputs.tmp / "empty").mkdir()
    return f"checkpoint.dir={inputs.tmp / 'empty'}"


def truncate_every_checkpoint(inputs: Inputs) -> str:
    for manifest in (inputs.run / "checkpoints").glob("*/state/manifest.ocdbt"):
        manifest.write_bytes(manifest.read_bytes()[:-20])
    return "checkpoint.resume=auto"


def random_init_of_another_width(inputs: Inputs) -> str:
    return f"tokenizer.path={inputs.model / 'tokenizer.model'}"


def batch_geometry(batch_size: int, data: int, fsdp: int) -> Prepare:
    """The run's check on a data x fsdp mesh: abstract in this process, which has one device; a child process
    on the command line gets data * fsdp CPU devices."""
    mesh = jax.sharding.AbstractMesh((data, fsdp, 1), ("data", "fsdp", "tensor"))

    def prepare(inputs: Inputs) -> Attempt:
        attempt = run(f"train.batch_size={batch_size}", f"mesh.data={data}", f"mesh.fsdp={fsdp}",
                      f"distributed.local_device_count={data * fsdp}")(inputs)
        return dataclasses.replace(attempt, call=lambda: check_batch_geometry(
            tiny_config(f"train.batch_size={batch_size}"), mesh, AXIS_RULES))
    return in_child(prepare)


def metrics_without_checkpoints(inputs: Inputs) -> str:
    """An out_dir with the metrics of an earlier run that never saved a checkpoint."""
    shutil.rmtree(inputs.run / "checkpoints")
    (inputs.run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.5}) + "\n")
    return "checkpoint.resume=auto"


CASES = [
    # id, how, error, what the message says (the problem, then the fix)
    ("unknown key", config("train.stepz=3"), ConfigError,
     ["config key 'train.stepz' is unknown", "Did you mean 'train.steps'?"]),
    ("unknown checkpoint key", config("checkpoint.every_step=5"), ConfigError,
     ["'checkpoint.every_step' is unknown", "Did you mean 'checkpoint.every_steps'?"]),
    ("wrong type", config("train.steps=ten"), ConfigError,
     ["config key 'train.steps' must be an integer, got 'ten'"]),
    ("not an allowed value", config("grpo.loss_type=ppo"), ConfigError,
     ["config key 'grpo.loss_type' got 'ppo'; allowed values: 'grpo', 'bnpo', 'dr_grpo', 'dapo'"]),
    ("not an allowed mode", config("checkpoint.best_mode=maximum"), ConfigError,
     ["config key 'checkpoint.best_mode' got 'maximum'", "(did you mean 'max'?)"]),
    ("minibatches do not divide the rollouts", config("grpo.num_minibatches=3"), ConfigError,
     ["config key 'grpo.num_minibatches' must divide train.batch_size * grpo.num_generations = 16, got 3"]),
    ("accumulation does not divide an update", config("grpo.num_minibatches=2", "grpo.gradient_accumulation_steps=3"),
     ConfigError, ["config key 'grpo.gradient_accumulation_steps' must divide the 8 rows of each update"]),
    ("one generation per prompt", config("grpo.num_generations=1"), ConfigError,
     ["config key 'grpo.num_generations' must be >= 2"]),
    ("accuracy reward not among the rewards", config("grpo.accuracy_reward=gsm8k"), ConfigError,
     ["config key 'grpo.accuracy_reward' must name one of grpo.rewards (r1_format, exact_answer), got 'gsm8k'"]),
    ("no checkpoints kept", config("checkpoint.keep_last=0"), ConfigError,
     ["config key 'checkpoint.keep_last' must be >= 1"]),
    ("no non-finite step allowed", config("train.max_nonfinite_steps=0"), ConfigError,
     ["config key 'train.max_nonfinite_steps' must be >= 1, got 0"]),
    ("file task without a file", config("task.name=gsm8k"), ConfigError,
     ["config key 'task.path' must name a .jsonl / .parquet file or a folder of them for task.name='gsm8k'"]),
    ("missing config file", lambda inputs: Attempt(lambda: load_config(inputs.tmp / "missing.yaml"),
                                                   ["train", str(inputs.tmp / "missing.yaml")]),
     ConfigError, ["config file", "missing.yaml' does not exist"]),
    ("override without a value", lambda inputs: Attempt(lambda: load_config(None, ["train.steps"]),
                                                        ["train", CONFIG, "train.steps"]),
     ConfigError, ["override 'train.steps' must look like dotted.key=value"]),
    ("batch does not split over data * fsdp", batch_geometry(6, 2, 2), ConfigError,
     ["config key 'train.batch_size' (6 prompts) must be a multiple of mesh.data=2 * mesh.fsdp=2 = 4",
      "set train.batch_size to a multiple of 4"]),
    ("mesh does not match the devices", run("mesh.data=3"), ConfigError,
     ["mesh.data=3, mesh.fsdp=1, mesh.tensor=1: their product is 3, but the run has 1 devices",
      "set one axis to -1", "on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N simulated devices"]),
    ("model directory missing", run(lambda inputs: f"train.model_dir={inputs.tmp / 'no-model'}"), ModelDirError,
     ["model.yaml' does not exist", "is not an rlreason model directory (make one with `rlreason pretrain`"]),
    ("model directory without weights", run(model_without_weights), ModelDirError,
     ["params' does not exist: the model directory has no weights"]),
    ("model directory with an invalid config", run(model_with_invalid_config), ModelDirError,
     ["model.yaml' is invalid: config key 'model.num_kv_heads' must divide num_heads (4), got 3"]),
    ("neither a model nor a tokenizer", run("train.model_dir="), ConfigError,
     ["config key 'train.model_dir' is empty and so is 'tokenizer.path'", "rlreason pretrain or rlreason convert"]),
    ("tokenizer without the R1 tags", run(model_with_tokenizer_lacking_r1_tags), TokenizerError,
     ["tokenizer cannot round-trip the tag '<think>'", "tokenizer.template='r1_short'",
      "use a tokenizer that has what the template needs"]),
    ("chat template without a chat tokenizer", run("tokenizer.template=chat"), TokenizerError,
     ["template 'chat' needs a tokenizer with a chat template"]),
    ("unknown reward function", run("grpo.rewards=[{name: r1_formatt}]", "grpo.accuracy_reward=r1_formatt"),
     ConfigError, ["config key 'grpo.rewards[0].name': unknown reward function 'r1_formatt' (did you mean "
                   "'r1_format'?)"]),
    ("data file missing", run("task.name=jsonl", lambda inputs: f"task.path={inputs.tmp / 'absent.jsonl'}"),
     ConfigError, ["config key 'task.path'", "absent.jsonl' does not exist"]),
    ("data row that is not JSON", run(*jsonl_task('{"question": "What is 9+9?", "answer": ')), BadRowsError,
     ["1 malformed row(s) in the train split of task 'jsonl'", "train.jsonl:5: is not valid JSON",
      "set task.on_bad_row=skip to train without them"]),
    ("data row without the question", run(*jsonl_task('{"problem": "What is 9+9?", "answer": "18"}')), BadRowsError,
     ["train.jsonl:5: has no field 'question' (task.prompt_field)"]),
    ("prompts longer than sampling.max_prompt_length", run("sampling.max_prompt_length=4"), BadRowsError,
     ["malformed row(s) in the train split of task 'addition'", "prompt is", "tokens with template 'r1_short', "
      "more than sampling.max_prompt_length=4 (raise it, or shorten the question)"]),
    ("unknown best metric", run("checkpoint.keep_best=1", "checkpoint.best_metric=rewardz"), ConfigError,
     ["config key 'checkpoint.best_metric' got 'rewardz', which is not a metric of the step",
      "choose one of", "reward"]),
    ("unknown eval metric", run("checkpoint.keep_best=1", "checkpoint.best_metric=eval/heldout/pass@9",
                                "train.eval_every=1", "checkpoint.every_steps=1"), ConfigError,
     ["config key 'checkpoint.best_metric' got 'eval/heldout/pass@9', which is not a metric of the step (nor of an "
      "evaluation)", "eval/heldout/pass@1_lenient", "eval/heldout/maj@4_strict"]),
    ("checkpoint directory is a file", run(checkpoint_dir_is_a_file), CheckpointError,
     ["checkpoints-file' is a file; point checkpoint.dir (or train.out_dir) elsewhere"]),
    ("resume required, no checkpoint directory", run("checkpoint.resume=required"), CheckpointError,
     ["checkpoint.resume=required, but checkpoint directory", "does not exist",
      "or checkpoint.resume=auto to start a new run"]),
    ("resume required, no checkpoint", run(empty_checkpoint_dir, "checkpoint.resume=required"), CheckpointError,
     ["checkpoint.resume=required, but", "empty' holds no checkpoint"]),
    ("every checkpoint truncated", run(truncate_every_checkpoint, resume=True), CheckpointError,
     ["can be restored (nothing was moved or deleted)", "checkpoints/2: ValueError", "checkpoints/1: ValueError"]),
    ("resume with a reference model the checkpoints lack", run("grpo.beta=0.04", resume=True), CheckpointError,
     ["checkpoints/2: the saved state does not fit this run's model and settings (missing from the checkpoint: "
      "ref_params.embed", "were train.model_dir, model.* or grpo.beta changed?"]),
    ("resume with a wider model", run("train.model_dir=", random_init_of_another_width, "model.hidden_size=64",
                                      resume=True), CheckpointError,
     ["shapes differ (checkpoint vs this run): opt_state.1.0.mu.embed (96, 48) here (96, 64)"]),
    ("resume with another batch size", run("train.batch_size=8", resume=True), CheckpointError,
     ["the data-iterator state was saved for another data stream", "batch_size 4 -> 8 (train.batch_size)",
      "Resume with the settings the checkpoints were saved with"]),
    ("earlier run's metrics but no checkpoint", run(metrics_without_checkpoints, resume=True), CheckpointError,
     ["run' holds metrics.jsonl of an earlier run, but", "checkpoints' holds no checkpoint to resume it from",
      "set train.out_dir to a new directory, or move those files away"]),
]

# The rows run as children in the default run (see the module docstring); the other child rows are slow.
DEFAULT_CHILDREN = {"mesh does not match the devices", "batch does not split over data * fsdp",
                    "model directory missing", "unknown reward function", "data row that is not JSON",
                    "every checkpoint truncated", "earlier run's metrics but no checkpoint"}


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` and a hash of its bytes."""
    return {str(path.relative_to(directory)): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def run_with_checkpoints(tiny_base_model, tmp_path_factory) -> Path:
    """A run's out_dir holding checkpoints 1 and 2 of its initial state (saved without compiling the step)."""
    out_dir = tmp_path_factory.mktemp("run")
    cfg = tiny_config(f"train.model_dir={tiny_base_model}", f"train.out_dir={out_dir}")
    trainer = build_trainer(cfg)
    with RunCheckpoints(cfg) as checkpoints:
        for step in (1, 2):
            checkpoints.save(step, trainer.state, trainer.batches, {"reward": 0.0})
    return out_dir


def test_the_table_has_at_least_twenty_bad_inputs():
    assert len(CASES) >= 20 and len({case[0] for case in CASES}) == len(CASES)


def make_inputs(tmp_path: Path, tiny_base_model: Path, run_with_checkpoints: Path) -> Inputs:
    inputs = Inputs(tmp_path, tmp_path / "model", tmp_path / "run")
    shutil.copytree(tiny_base_model, inputs.model)
    shutil.copytree(run_with_checkpoints, inputs.run)
    return inputs


def assert_nothing_left_or_changed(inputs: Inputs, saved: dict[str, str]) -> None:
    assert not (inputs.tmp / "out").exists(), "a refused run left its out_dir behind"
    assert snapshot(inputs.run) == saved, "a refused resume changed the saved files"


@pytest.mark.parametrize("prepare, error, says", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_with_the_problem_and_the_fix(prepare, error, says, tiny_base_model,
                                                          run_with_checkpoints, tmp_path):
    inputs = make_inputs(tmp_path, tiny_base_model, run_with_checkpoints)
    attempt = prepare(inputs)
    saved = snapshot(inputs.run)
    with pytest.raises(error) as refused:
        attempt.call()
    for text in says:
        assert text in str(refused.value), f"{text!r} not in: {refused.value}"
    assert_nothing_left_or_changed(inputs, saved)


def cli_case(case) -> pytest.param:
    name, prepare, _, _ = case
    slow = getattr(prepare, "in_child", False) and name not in DEFAULT_CHILDREN
    return pytest.param(prepare, id=name, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("prepare", [cli_case(case) for case in CASES])
def test_the_command_line_prints_the_error_and_exits_2_without_a_traceback(prepare, tiny_base_model,
                                                                          run_with_checkpoints, tmp_path, capsys):
    """The command line ends with the library's error message after `rlreason train: error: ` (the message may
    list several rows or checkpoints on lines of their own), and prints nothing after it."""
    inputs = make_inputs(tmp_path, tiny_base_model, run_with_checkpoints)
    attempt = prepare(inputs)
    with pytest.raises(Exception) as refused:
        attempt.call()
    saved = snapshot(inputs.run)
    capsys.readouterr()
    if getattr(prepare, "in_child", False):
        child = subprocess.run([sys.executable, "-m", "rlreason", *attempt.argv], cwd=REPO, capture_output=True,
                               text=True, timeout=CHILD_TIMEOUT_S)
        code, stderr = child.returncode, child.stderr
    else:
        code, stderr = main(attempt.argv), capsys.readouterr().err
    assert code == 2, f"exit code {code}:\n{stderr[-4000:]}"
    assert "Traceback" not in stderr, stderr
    _, *messages = stderr.split("rlreason train: error: ")
    assert len(messages) == 1, f"not one error message:\n{stderr[-4000:]}"
    # Line by line: a restore error quotes whichever of orbax's parallel reads failed first.
    printed, expected = messages[0].splitlines(), str(refused.value).splitlines()
    # The reward registry of this process also holds the test suite's own reward functions; a child's does not.
    printed[0], expected[0] = (line.split("; registered: ")[0] for line in (printed[0], expected[0]))
    assert (len(printed), printed[0], printed[-1]) == (len(expected), expected[0], expected[-1]), stderr[-4000:]
    assert messages[0].endswith("\n"), "something printed after the error message"
    assert_nothing_left_or_changed(inputs, saved)
