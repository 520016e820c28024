"""Exporting rlreason params to Hugging Face checkpoints that transformers loads and runs identically.

Tolerance: float32 logits within atol 1e-4 of rlreason's own (measured max |diff| about 1e-5).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from hf_reference import FAMILY_CASES, VOCAB, build_hf_model, hf_config, hf_logits, rlreason_logits
from tokenizers import models, pre_tokenizers, trainers

from rlreason.config import ModelConfig
from rlreason.models.convert import convert, export_hf
from rlreason.models.families import UnsupportedModelError, model_config_from_hf
from rlreason.models.hf_export import save_hf
from rlreason.models.hf_import import import_hf
from rlreason.models.store import load_model
from rlreason.models.transformer import init_params
from rlreason.tokenizers import load_tokenizer
from rlreason.tokenizers.templates import render_prompt

LOGITS_ATOL = 1e-4


def random_params(cfg: ModelConfig, seed: int):
    """Params with every leaf random (norm scales and biases too), so that a misplaced tensor shows."""
    params = init_params(dataclasses.replace(cfg, init_std=0.1), jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(treedef, [leaf + 0.2 * jax.random.normal(key, leaf.shape)
                                        for leaf, key in zip(leaves, keys)])


def family_config(case: str) -> ModelConfig:
    return model_config_from_hf(hf_config(case).to_dict())


def load_in_transformers(directory) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_exported_params_run_identically_in_transformers(case, tmp_path):
    cfg = family_config(case)
    params = random_params(cfg, seed=3)
    save_hf(params, cfg, tmp_path)
    tokens = np.random.default_rng(4).integers(0, VOCAB, (2, 18))
    np.testing.assert_allclose(hf_logits(load_in_transformers(tmp_path), tokens), rlreason_logits(params, cfg, tokens),
                               rtol=0, atol=LOGITS_ATOL)


def test_sharded_export_writes_an_index_and_round_trips(tmp_path):
    cfg = family_config("qwen2_bias_tied")
    params = random_params(cfg, seed=5)
    save_hf(params, cfg, tmp_path, max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    reimported, reimported_cfg = import_hf(tmp_path)
    assert reimported_cfg == cfg
    for original, back in zip(jax.tree.leaves(params), jax.tree.leaves(reimported)):
        np.testing.assert_array_equal(np.asarray(original), np.asarray(back))
    tokens = np.arange(12)[None] % VOCAB
    np.testing.assert_allclose(hf_logits(load_in_transformers(tmp_path), tokens), rlreason_logits(params, cfg, tokens),
                               rtol=0, atol=LOGITS_ATOL)


def test_export_refuses_settings_the_family_cannot_express(tmp_path):
    cfg = dataclasses.replace(family_config("llama_gqa_untied"), qk_norm=True, attn_logit_softcap=10.0)
    with pytest.raises(UnsupportedModelError, match="qk_norm=True.*attn_logit_softcap=10.0"):
        save_hf(random_params(cfg, seed=0), cfg, tmp_path)


CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def hf_directory_with_tokenizer(tmp_path_factory):
    """A random Llama checkpoint with a small trained BPE tokenizer.json and a chat template, as HF ships one."""
    directory = tmp_path_factory.mktemp("hf_with_tokenizer")
    build_hf_model("llama_gqa_untied").save_pretrained(directory)
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["What is the capital of France? Paris is.", "one two three four"] * 20,
                                trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "</s>"],
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "</s>", "special": True}, "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE}))
    return directory


def test_convert_then_export_hf_round_trips_weights_tokenizer_and_chat_template(hf_directory_with_tokenizer, tmp_path):
    convert(hf_directory_with_tokenizer, tmp_path / "rlreason")
    params, cfg, tokenizer = load_model(tmp_path / "rlreason")
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.eos_id == 1 and tokenizer.pad_id == 0
    export_hf(tmp_path / "rlreason", tmp_path / "hf")

    tokens = np.random.default_rng(6).integers(0, VOCAB, (1, 16))
    original = load_in_transformers(hf_directory_with_tokenizer)
    np.testing.assert_allclose(hf_logits(load_in_transformers(tmp_path / "hf"), tokens), hf_logits(original, tokens),
                               rtol=0, atol=0)
    np.testing.assert_allclose(rlreason_logits(params, cfg, tokens), hf_logits(original, tokens), rtol=0,
                               atol=LOGITS_ATOL)
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    question = "What is the capital of France?"
    prompt = render_prompt(question, "chat", load_tokenizer(tmp_path / "hf" / "tokenizer.json"))
    assert prompt == reference_tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                             add_generation_prompt=True)
    assert prompt == f"<|user|>{question}</s><|assistant|>"
    assert tokenizer.encode(prompt) == reference_tokenizer.encode(prompt, add_special_tokens=False)
