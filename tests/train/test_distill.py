"""`rlreason distill`: the reverse KL equals a float64 numpy reference, the step's loss is that KL on the
student's own samples (recomputed here by plain forward passes), whole or in chunks of positions, chunks keep a
152k vocabulary's logits small, a student moves toward its teacher, and a teacher with another tokenizer is
refused."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import TINY_OVERRIDES, tiny_config
from train_runs import metric_rows

from rlreason import cli
from rlreason.config import ConfigError, ModelConfig
from rlreason.models.store import load_model
from rlreason.models.transformer import forward, init_params, positions_from_mask
from rlreason.rl.step import init_train_state
from rlreason.sampling.sampler import SamplingParams
from rlreason.search.continuation import compiled_sampler
from rlreason.train.distill import distill, make_distill_step, token_reverse_kl
from rlreason.train.optim import make_optimizer
from rlreason.train.pretrain import pretrain

STUDENT = ["model.hidden_size=32", "model.head_dim=8", "model.intermediate_size=64"]


def numpy_reverse_kl(student_logits: np.ndarray, teacher_logits: np.ndarray, mask: np.ndarray) -> float:
    """Sum over masked positions of sum_v p_s(v) log(p_s(v) / p_t(v)), in float64."""
    def log_softmax(logits):
        logits = logits.astype(np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    student, teacher = log_softmax(student_logits), log_softmax(teacher_logits)
    return float(((np.exp(student) * (student - teacher)).sum(-1) * mask).sum())


def kl_tolerance(*logits: np.ndarray, tokens: float) -> float:
    # float32 log-softmax over V entries: a few roundings of the largest |logit| per entry, V entries a token.
    vocab = logits[0].shape[-1]
    return tokens * vocab * 8 * np.finfo(np.float32).eps * max(np.abs(x).max() for x in logits)


def test_reverse_kl_equals_the_formula():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 2, 5, 11)) * 3
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    total = np.sum(np.asarray(token_reverse_kl(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32)))
                   * mask)
    assert abs(float(total) - numpy_reverse_kl(student, teacher, mask)) <= kl_tolerance(student, teacher, tokens=8)
    same = np.sum(np.asarray(token_reverse_kl(jnp.asarray(student, jnp.float32), jnp.asarray(student, jnp.float32)))
                  * mask)
    assert abs(float(same)) <= kl_tolerance(student, tokens=8)


@pytest.fixture(scope="module")
def student_model(tiny_base_model, tmp_path_factory):
    """A narrower model pretrained briefly with the teacher's (tiny_base_model's) tokenizer."""
    cfg = tiny_config(*STUDENT, f"tokenizer.path={tiny_base_model / 'tokenizer.model'}", "pretrain.steps=40",
                      "train.seed=1")
    return pretrain(cfg, tmp_path_factory.mktemp("student"), show_progress=False)


@pytest.mark.parametrize("chunk", [0, 5])
def test_the_step_loss_is_the_reverse_kl_on_the_students_samples(tiny_base_model, student_model, chunk):
    """Whole, and in chunks of 5 of the 24 completion positions (the last chunk padded)."""
    cfg = tiny_config(*STUDENT)
    student_params, student_cfg, tokenizer = load_model(student_model)
    student_cfg = dataclasses.replace(student_cfg, logprob_chunk_size=chunk)
    teacher_params, teacher_cfg, _ = load_model(tiny_base_model)
    optimizer, schedule = make_optimizer(cfg.distill.optim, cfg.train.steps)
    state = init_train_state(student_params, optimizer, jax.random.key(7), keep_reference=False)
    prompt_tokens = jnp.asarray([[tokenizer.pad_id] * 2 + tokenizer.encode("User: What is 3+4?\nAssistant:")[-14:]])
    prompt_mask = (prompt_tokens != tokenizer.pad_id).astype(jnp.int32)
    step = make_distill_step(student_cfg, teacher_cfg, cfg, tokenizer, optimizer, schedule)
    _, metrics = step(state, teacher_params, {"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask})
    # The same samples (the step's key split), scored by plain forward passes over prompt + completion.
    roll = compiled_sampler(None)(
        student_params, prompt_tokens, prompt_mask, jax.random.split(jax.random.key(7))[1], student_cfg,
        SamplingParams.from_config(cfg.sampling), cfg.distill.num_generations, tokenizer.stop_ids, tokenizer.pad_id)
    tokens = jnp.concatenate([roll.prompt_tokens, roll.tokens], axis=1)
    valid = jnp.concatenate([roll.prompt_mask.astype(bool), jnp.ones(roll.tokens.shape, bool)], axis=1)
    width = roll.prompt_tokens.shape[1]
    logits = [np.asarray(forward(params, tokens, positions_from_mask(valid), valid, model_cfg)[0])
              [:, width - 1:-1] for params, model_cfg in ((student_params, student_cfg), (teacher_params, teacher_cfg))]
    mask = np.asarray(roll.completion_mask, np.float64)
    expected = numpy_reverse_kl(*logits, mask) / mask.sum()
    assert float(metrics["completion_tokens"]) == mask.sum() > 0
    assert abs(float(metrics["loss"]) - expected) <= kl_tolerance(*logits, tokens=1)


def test_chunked_logits_keep_a_152k_vocabulary_step_small(student_model):
    """The distillation step compiled for a Qwen2.5-sized vocabulary (152,064), student and teacher alike, and
    8 completions of 512 tokens: one [8, 512, V] float32 buffer of logits is 2.5 GB, and the whole-completion
    program keeps several. In chunks of 16 positions the step's temporaries stay below 0.5 GB."""
    cfg = tiny_config(*STUDENT, "train.batch_size=1", "distill.num_generations=8", "sampling.max_completion_length=512")
    tokenizer = load_model(student_model)[2]
    model_cfg = ModelConfig(vocab_size=152_064, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                            head_dim=32, intermediate_size=128)
    full_logits_bytes = 8 * 512 * model_cfg.vocab_size * 4
    optimizer, schedule = make_optimizer(cfg.distill.optim, cfg.train.steps)
    rng = jax.random.key(0)
    state = jax.eval_shape(lambda: init_train_state(init_params(model_cfg, rng), optimizer, rng, False))
    prompts = {key: jax.ShapeDtypeStruct((1, 16), jnp.int32) for key in ("prompt_tokens", "prompt_mask")}

    def temporary_bytes(chunk: int) -> int:
        student_cfg = dataclasses.replace(model_cfg, logprob_chunk_size=chunk)
        step = make_distill_step(student_cfg, model_cfg, cfg, tokenizer, optimizer, schedule)
        return step.lower(state, state.params, prompts).compile().memory_analysis().temp_size_in_bytes

    assert temporary_bytes(0) > full_logits_bytes
    assert temporary_bytes(16) < 0.5e9 < full_logits_bytes / 4


def test_a_student_moves_toward_its_teacher(tiny_base_model, student_model, tmp_path):
    cfg = tiny_config(*STUDENT, f"train.model_dir={student_model}", f"distill.teacher={tiny_base_model}",
                      f"train.out_dir={tmp_path}", "train.steps=24",
                      "distill.optim={learning_rate: 0.003, warmup_steps: 0, schedule: constant}")
    _, history = distill(cfg, show_progress=False)
    kl = [row["loss"] for row in history]
    assert np.mean(kl[-4:]) < 0.8 * np.mean(kl[:4])
    assert np.mean([row["teacher_logprob"] for row in history[-4:]]) > np.mean(
        [row["teacher_logprob"] for row in history[:4]])
    assert [row["step"] for row in metric_rows(tmp_path)] == list(range(1, 25))
    assert (tmp_path / "model" / "model.yaml").is_file()


def test_a_teacher_with_another_tokenizer_is_refused(tiny_base_model, tmp_path):
    other = pretrain(tiny_config(*STUDENT, "tokenizer.vocab_size=70", "pretrain.steps=2"), tmp_path / "other",
                     show_progress=False)
    cfg = tiny_config(*STUDENT, "tokenizer.vocab_size=70", f"train.model_dir={other}",
                      f"distill.teacher={tiny_base_model}", f"train.out_dir={tmp_path / 'run'}")
    with pytest.raises(ConfigError, match="config key 'distill.teacher': the model in .* has another tokenizer"):
        distill(cfg, show_progress=False)
    assert not (tmp_path / "run").exists()


def test_the_command_without_a_teacher_names_the_key(student_model, tmp_path, capsys):
    code = cli.main(["distill", "configs/demo_cpu.yaml", *TINY_OVERRIDES, *STUDENT, f"train.model_dir={student_model}",
                     f"train.out_dir={tmp_path / 'run'}"])
    assert code == 2 and "rlreason distill: error: config key 'distill.teacher' is empty" in capsys.readouterr().err
