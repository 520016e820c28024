import dataclasses
from pathlib import Path

import pytest

from rlreason.config import Config, ConfigError, from_dict, load_config, save_config, to_dict

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


def test_defaults_validate():
    assert isinstance(load_config(None), Config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(path)


def test_misspelt_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"'grpo.num_generaions' is unknown. Did you mean 'grpo.num_generations'"):
        load_config(None, ["grpo.num_generaions=4"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'train.steps' must be an integer, got 'many'"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"'model.scan_layers' must be true or false"):
        load_config(None, ["model.scan_layers=3"])


def test_wrong_choice_lists_the_allowed_values():
    with pytest.raises(ConfigError, match=r"'grpo.loss_type' got 'dapo2'; allowed values: 'grpo', 'bnpo', "
                                          r"'dr_grpo', 'dapo' \(did you mean 'dapo'\?\)"):
        load_config(None, ["grpo.loss_type=dapo2"])


def test_cross_field_validation():
    with pytest.raises(ConfigError, match=r"'model.num_kv_heads' must be <= num_heads"):
        load_config(None, ["model.num_heads=2", "model.num_kv_heads=4"])
    with pytest.raises(ConfigError, match=r"'grpo.accuracy_reward' must name one of grpo.rewards"):
        load_config(None, ["grpo.accuracy_reward=gsm8k"])
    with pytest.raises(ConfigError, match=r"'sampling.prompt_bucket' must be >= 0 \(0: no trimming\), got -8"):
        load_config(None, ["sampling.prompt_bucket=-8"])
    with pytest.raises(ConfigError, match=r"'sampling.decode_segments' must be in \[1, "
                                          r"sampling.max_completion_length \(16\)\], got 17"):
        load_config(None, ["sampling.max_completion_length=16", "sampling.decode_segments=17"])
    with pytest.raises(ConfigError, match=r"'sampling.prompt_bucket' must be 0 with grpo.dynamic_sampling=refill"):
        load_config(None, ["sampling.prompt_bucket=8", "grpo.dynamic_sampling=refill"])


def test_token_scoring_refuses_rewards_without_a_token_version():
    assert load_config(None, ["grpo.scoring=jax"]).grpo.scoring == "jax"  # the default rewards have one
    with pytest.raises(ConfigError, match=r"'grpo.rewards\[1\].name' must have a token-level version with "
                                          r"grpo.scoring=jax \(r1_format, exact_answer\), got 'gsm8k'"):
        load_config(None, ["grpo.scoring=jax", "grpo.rewards=[{name: r1_format}, {name: gsm8k}]",
                           "grpo.accuracy_reward=gsm8k"])


def test_overrides_apply_and_file_errors_name_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("grpo:\n  beta: 0.04\ntrain: {steps: 3}\n")
    cfg = load_config(path, ["train.steps=5", "grpo.rewards=[{name: r1_format}, {name: exact_answer, weight: 2}]"])
    assert cfg.grpo.beta == 0.04 and cfg.train.steps == 5 and cfg.grpo.rewards[1].weight == 2.0
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("grpo: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(path)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(CONFIGS[0], ["grpo.beta=0.01"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_configs_are_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3  # type: ignore[misc]


EVAL_BEST = ["checkpoint.keep_best=1", "checkpoint.best_metric=eval/heldout/pass@1_lenient"]


@pytest.mark.parametrize("overrides, message", [
    (EVAL_BEST, r"config key 'train.eval_every' must be > 0: checkpoint.best_metric='eval/heldout/pass@1_lenient' "
                r"is an evaluation metric"),
    (EVAL_BEST + ["train.eval_every=5", "checkpoint.every_steps=3"],
     r"config key 'checkpoint.every_steps' must be a positive multiple of train.eval_every \(5\)"),
    (EVAL_BEST + ["train.eval_every=5"], r"config key 'checkpoint.every_steps' must be a positive multiple"),
    (["checkpoint.keep_best=1", "checkpoint.best_metric=eval/gsm8k/pass@1", "train.eval_every=5",
      "checkpoint.every_steps=10"], r"config key 'checkpoint.best_metric' must look like eval/<set>/<metric> with "
                                    r"<set> one of eval.sets \(heldout\)"),
    (["eval.sets=[{name: a}, {name: a, source: addition}]"], r"config key 'eval.sets' names a set twice"),
    (["eval.sets=[{name: 'a b'}]"], r"config key 'eval.sets\[0\].name' must be letters, digits"),
    (["eval.sets=[{name: gsm, source: gsm8k}]"], r"config key 'eval.sets\[0\].path' must name a .jsonl"),
    (["eval.sets=[]"], r"config key 'eval.sets' needs at least one set"),
    (["train.eval_every=-1"], r"config key 'train.eval_every' must be >= 0"),
])
def test_evaluation_settings_are_checked_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_an_eval_best_metric_with_aligned_checkpoints_loads():
    cfg = load_config(None, EVAL_BEST + ["train.eval_every=5", "checkpoint.every_steps=10"])
    assert cfg.checkpoint.best_metric == "eval/heldout/pass@1_lenient"


@pytest.mark.parametrize("overrides, message", [
    (["task.min_digits=3", "task.max_digits=2"], r"config key 'task.max_digits' must be >= task.min_digits \(3\)"),
    (["sft.seq_len=1"], r"config key 'sft.seq_len' must be >= 2"),
    (["sft.response_field="], r"config key 'sft.response_field' must name a field"),
    (["generate.max_per_prompt=0"], r"config key 'generate.max_per_prompt' must be >= 1"),
    (["generate.split=test"], r"config key 'generate.split' got 'test'"),
    (["star.hint='{question} only'"], r"config key 'star.hint' must hold \{question\} and \{answer\}"),
    (["star.rounds=0"], r"config key 'star.rounds' must be >= 1"),
])
def test_sft_generate_and_star_settings_are_checked_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_section_given_in_part_keeps_the_rest_of_its_own_default():
    """grpo.optim's default is a constant schedule with 5 warmup steps, pretrain.optim's a cosine with 20, unlike
    OptimConfig's own defaults: setting one key of either leaves the others at that section's default."""
    cfg = load_config(None, ["grpo.optim.learning_rate=0.5", "pretrain.optim.learning_rate=0.25",
                             "distill.optim={learning_rate: 0.125}"])
    assert (cfg.grpo.optim.learning_rate, cfg.grpo.optim.schedule, cfg.grpo.optim.warmup_steps) == (0.5, "constant", 5)
    assert (cfg.pretrain.optim.learning_rate, cfg.pretrain.optim.warmup_steps) == (0.25, 20)
    assert (cfg.distill.optim.learning_rate, cfg.distill.optim.schedule) == (0.125, "constant")
    assert load_config(None, ["grpo.optim.schedule=cosine"]).grpo.optim.learning_rate == 1e-4


@pytest.mark.parametrize("text", ["'Solve: {problem}'", "'no field at all'", "'{question} and {question}'",
                                  "'{question'"])
def test_a_question_format_without_exactly_one_question_field_is_refused(text):
    with pytest.raises(ConfigError, match=r"'task.question_format' must be a format string with one \{question\}"):
        load_config(overrides=[f"task.question_format={text}"])
