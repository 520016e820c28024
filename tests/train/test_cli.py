"""The command line: help, argument order, config errors, and the model-directory commands on a tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from host_pages import machine_gives_huge_pages_on_request, machine_thp_mode_line

from rlreason.cli import COMMANDS, WITHOUT_CONFIG, _parse, main

# Each command's required options, with the value they take.
REQUIRED_OPTIONS = {"pretrain": ["--out", "runs/base"], "eval": ["--model", "runs/base"],
                    "sample": ["--model", "runs/base", "--prompt", "What is 3+4?"],
                    "generate": ["--model", "runs/base", "--out", "runs/kept.jsonl"],
                    "star": ["--model", "runs/base", "--out", "runs/star"],
                    "prm": ["--model", "runs/base", "--out", "runs/prm"],
                    "search": ["--model", "runs/base", "--out", "runs/search"]}
OVERRIDES = ["train.steps=40", "sampling.temperature=0"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rlreason", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("command", [name for name in COMMANDS if name != "convert"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert COMMANDS[command].split()[0] in capsys.readouterr().out


def arrangements(command: str) -> list[list[str]]:
    """The command's arguments with its options (--quiet and the required ones) before, between and after the
    config and the overrides."""
    options = ["--quiet", *REQUIRED_OPTIONS.get(command, [])]
    config = "configs/demo_cpu.yaml"
    return [[*options, config, *OVERRIDES], [config, *options, *OVERRIDES], [config, *OVERRIDES, *options],
            [config, OVERRIDES[0], *options, OVERRIDES[1]], [options[0], config, OVERRIDES[0], *options[1:],
                                                            OVERRIDES[1]]]


@pytest.mark.parametrize("command", [name for name in COMMANDS if name not in WITHOUT_CONFIG])
def test_options_may_come_anywhere_among_the_config_and_the_overrides(command):
    for arguments in arrangements(command):
        args, config, overrides = _parse([command, *arguments])
        assert (config, overrides, args.quiet) == ("configs/demo_cpu.yaml", OVERRIDES, True), arguments
        if command in ("eval", "sample", "generate", "star", "prm"):
            assert args.model == "runs/base"
        if command == "pretrain":
            assert args.out == "runs/base"
        if command == "sample":
            assert args.prompt == ["What is 3+4?"]


@pytest.mark.parametrize("arguments, says", [
    (["train"], "the first argument must be a config file"),
    (["train", "train.steps=3"], "the first argument must be a config file"),
    (["train", "configs/demo_cpu.yaml", "--stepz", "3"], "unrecognized arguments: --stepz"),
    (["pretrain", "configs/demo_cpu.yaml", "pretrain.steps=4"], "the following arguments are required: --out"),
])
def test_a_forgotten_config_or_a_wrong_option_is_a_usage_error(arguments, says, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


def test_bad_config_is_refused_with_the_key_named(capsys):
    assert main(["train", "configs/demo_cpu.yaml", "grpo.los_type=dapo"]) == 2
    assert "rlreason train: error: config key 'grpo.los_type' is unknown. Did you mean 'grpo.loss_type'" in \
        capsys.readouterr().err
    assert main(["train", "configs/missing.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sample_and_eval_from_a_model_directory(tiny_base_model):
    from tiny_run import TINY_OVERRIDES

    sample = run_cli("sample", "configs/demo_cpu.yaml", *TINY_OVERRIDES, "sampling.temperature=0",
                     "--model", str(tiny_base_model), "--prompt", "What is 3+4?", "--prompt", "What is 9+9?")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.count("--- What is") == 2
    evaluation = run_cli("eval", "configs/demo_cpu.yaml", *TINY_OVERRIDES, "--model", str(tiny_base_model))
    assert evaluation.returncode == 0, evaluation.stderr
    summary = json.loads(evaluation.stdout[evaluation.stdout.index("{"):])
    assert summary["num_problems"] == 8 and 0 <= summary["pass@1"] <= 1
    assert f"eval: model {tiny_base_model}, set 'heldout': 8 problems, 4 samples each" in evaluation.stdout


def test_bench_prints_phase_times_and_memory(tiny_base_model):
    from tiny_run import TINY_OVERRIDES

    result = run_cli("bench", "configs/demo_cpu.yaml", *TINY_OVERRIDES, f"train.model_dir={tiny_base_model}",
                     "grpo.beta=0.04")
    assert result.returncode == 0, result.stderr
    assert "random" not in result.stdout  # a trained model: no note about random weights
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("median_step_s", "median_rollout_s", "median_score_s", "median_update_s", "completion_tokens_per_s"):
        assert figures[key] > 0, key
    assert figures["params_bytes_per_device"] > 0
    assert "split: sampling" in result.stdout
    assert 0 < figures["median_reference_s"] < figures["median_update_s"]  # a part of the update (beta > 0)
    # The command line re-ran itself with huge pages wherever the machine gives them on request (rlreason.huge_pages).
    always = "[always]" in machine_thp_mode_line()
    assert figures["host_huge_pages"] is (always or machine_gives_huge_pages_on_request())
    # MFU: the step's model FLOPs per second over a matmul peak measured in the same run.
    assert figures["achieved_gflops"] == pytest.approx(figures["step_gflop"] / figures["median_step_s"], rel=0.01)
    assert figures["mfu"] == pytest.approx(figures["achieved_gflops"] / figures["peak_matmul_gflops"], rel=0.01)
    assert 0 < figures["mfu"] < 1 and figures["peak_memory_bytes"] > 0
    assert figures["programs_compiled"] + figures["programs_loaded_from_cache"] > 0  # the step, at least
    # The figures name the machine they were taken on (as lscpu does, from the kernel's CPU description).
    cpu_names = {line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")}
    assert figures["cpu"] in cpu_names and f"({figures['cpu']}, " in result.stdout


def test_bench_memory_counts_the_state_and_sees_chunked_logits_shrink(capsys):
    """`rlreason bench --memory` compiles the step and reads XLA's memory analysis, running nothing. The state it
    counts is params + Adam's two moments + the reference copy (beta > 0): 4 float32 copies of the parameters,
    plus a few small arrays (the batch, the RNG, counters). Computing log-probs in chunks of 4 positions must
    shed at least two full [rows, completion, vocab] float32 logit buffers from the temporaries."""
    import jax
    import numpy as np

    from rlreason.models.transformer import param_specs
    from tiny_run import TINY_OVERRIDES, tiny_config

    settings = [*TINY_OVERRIDES, "train.model_dir=", "grpo.beta=0.04", "model.vocab_size=16384"]
    figures = []
    for extra in ([], ["model.logprob_chunk_size=4"]):
        assert main(["bench", "--memory", "configs/demo_cpu.yaml", *settings, *extra]) == 0
        output = capsys.readouterr().out
        assert "nothing run" in output and "peak per device" in output
        figures.append(json.loads(output.strip().splitlines()[-1]))
    whole, chunked = figures
    cfg = tiny_config(*settings)
    state_bytes = 4 * 4 * sum(int(np.prod(spec.shape)) for spec in jax.tree.leaves(
        param_specs(cfg.model), is_leaf=lambda node: hasattr(node, "axes")))
    assert 0 <= whole["argument_bytes"] - state_bytes < 2**16
    assert state_bytes <= whole["donated_bytes"] <= whole["argument_bytes"]
    assert whole["peak_bytes"] == (whole["argument_bytes"] + whole["output_bytes"] - whole["donated_bytes"]
                                   + whole["temporary_bytes"])
    rows = cfg.train.batch_size * cfg.grpo.num_generations
    logits_bytes = rows * cfg.sampling.max_completion_length * cfg.model.vocab_size * 4
    assert chunked["temporary_bytes"] < whole["temporary_bytes"] - 2 * logits_bytes
    assert chunked["argument_bytes"] == whole["argument_bytes"]


def test_pretrain_with_options_before_the_overrides_ends_with_where_the_model_went(tmp_path, capsys):
    from tiny_run import TINY_OVERRIDES

    out = tmp_path / "base"
    assert main(["pretrain", "configs/demo_cpu.yaml", "--out", str(out), *TINY_OVERRIDES, "pretrain.steps=2",
                 "--quiet"]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith("pretrain: 2 steps in") and summary.endswith(f"model written to {out}")
    assert (out / "model.yaml").is_file()


def test_bench_says_it_times_random_weights_without_a_model_dir(capsys):
    from tiny_run import TINY_OVERRIDES

    # The mesh error stops it before anything compiles, after the note.
    assert main(["bench", "configs/demo_cpu.yaml", *TINY_OVERRIDES, "train.model_dir=", "mesh.data=3"]) == 2
    captured = capsys.readouterr()
    assert "train.model_dir is empty, so this times a randomly initialised model" in captured.out
    assert "rlreason bench: error: config keys mesh.data=3" in captured.err


def test_bench_of_random_weights_runs_on_the_simulated_devices_its_config_asks_for():
    """The random model is made before the trainer: the CPU device count must already be set by then (JAX
    refuses it once its backend has started)."""
    from tiny_run import TINY_OVERRIDES

    result = run_cli("bench", "--quiet", "configs/demo_cpu.yaml", *TINY_OVERRIDES, "train.model_dir=",
                     "distributed.local_device_count=2", "mesh.data=2", "mesh.fsdp=1")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["device"] == "2 x cpu" and figures["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("arguments, says", [
    (["convert", "{tmp}/missing", "{tmp}/out"],
     "rlreason convert: error: '{tmp}/missing' is neither a Hugging Face model directory nor a .gguf file"),
    (["eval", "configs/demo_cpu.yaml", "--model", "{tmp}/missing"],
     "rlreason eval: error: '{tmp}/missing/model.yaml' does not exist"),
    (["sample", "configs/demo_cpu.yaml", "--model", "{tmp}/missing", "--prompt", "What is 1+1?"],
     "rlreason sample: error: '{tmp}/missing/model.yaml' does not exist"),
])
def test_model_directory_commands_refuse_a_missing_source_with_exit_2(arguments, says, tmp_path, capsys):
    assert main([argument.format(tmp=tmp_path) for argument in arguments]) == 2
    assert says.format(tmp=tmp_path) in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "a refused command left files behind"
