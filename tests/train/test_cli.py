"""The command line: help, config errors, and the model-directory commands on a tiny model."""

import json
import subprocess
import sys

import pytest

from rlreason.cli import COMMANDS, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rlreason", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("command", [name for name in COMMANDS if name != "convert"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert COMMANDS[command].split()[0] in capsys.readouterr().out


def test_bad_config_is_refused_with_the_key_named(capsys):
    assert main(["train", "configs/demo_cpu.yaml", "grpo.los_type=dapo"]) == 2
    assert "'grpo.los_type' is unknown. Did you mean 'grpo.loss_type'" in capsys.readouterr().err
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


def test_bench_prints_phase_times_and_memory(tiny_base_model):
    from tiny_run import TINY_OVERRIDES

    result = run_cli("bench", "configs/demo_cpu.yaml", *TINY_OVERRIDES, f"train.model_dir={tiny_base_model}")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("median_step_s", "median_rollout_s", "median_score_s", "median_update_s", "completion_tokens_per_s"):
        assert figures[key] > 0, key
    assert figures["params_bytes_per_device"] > 0
    assert "split: sampling" in result.stdout
    # MFU: the step's model FLOPs per second over a matmul peak measured in the same run.
    assert figures["achieved_gflops"] == pytest.approx(figures["step_gflop"] / figures["median_step_s"], rel=0.01)
    assert figures["mfu"] == pytest.approx(figures["achieved_gflops"] / figures["peak_matmul_gflops"], rel=0.01)
    assert 0 < figures["mfu"] < 1 and figures["peak_memory_bytes"] > 0
