"""The vocabulary embedded in GGUF metadata, checked against transformers building its tokenizer from the same file."""

from __future__ import annotations

import json
import os

import gguf
import pytest
import tokenizers
from tokenizers import pre_tokenizers, trainers

os.environ["HF_HUB_OFFLINE"] = "1"
import transformers  # noqa: E402

from rlreason.tokenizers import TokenizerError, load_tokenizer  # noqa: E402
from rlreason.tokenizers.templates import render_prompt  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" \
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_vocab_gguf(path, tokenizer_model: str = "gpt2", pre: str = "qwen2") -> None:
    """A GGUF file holding only a byte-level BPE vocabulary, written as llama.cpp writes one."""
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["What is 12 plus 345? The answer is 357.", "Hello world, héllo wörld!"] * 30,
                                trainers.BpeTrainer(vocab_size=360, special_tokens=CONTROL_TOKENS,
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(backend.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get) + ["<think>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(merge) if isinstance(merge, list) else merge for merge in model["merges"]])
    writer.add_token_types([gguf.TokenType.CONTROL if token in CONTROL_TOKENS else
                            gguf.TokenType.USER_DEFINED if token == "<think>" else gguf.TokenType.NORMAL
                            for token in tokens])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def vocab_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "vocab.gguf"
    write_vocab_gguf(path)
    return path


def test_gguf_vocabulary_encodes_like_transformers(vocab_gguf):
    tokenizer = load_tokenizer(vocab_gguf)
    reference = transformers.AutoTokenizer.from_pretrained(vocab_gguf.parent, gguf_file=vocab_gguf.name)
    for text in ["What is 12 plus 345?", "  héllo\n\nwörld 2024", "<|im_start|>user<|im_end|><think>x", "日本"]:
        assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False), text
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 0)
    assert tokenizer.token_to_id("<think>") == len(reference) - 1


def test_gguf_tokenizer_saved_in_a_model_dir_keeps_its_chat_template(vocab_gguf, tmp_path):
    tokenizer = load_tokenizer(vocab_gguf)
    reloaded = load_tokenizer(tmp_path / tokenizer.save_to(tmp_path))
    prompt = render_prompt("What is 12 plus 345?", "chat", reloaded)
    assert prompt == "<|im_start|>user\nWhat is 12 plus 345?<|im_end|>\n<|im_start|>assistant\n"
    assert reloaded.encode(prompt) == tokenizer.encode(prompt)
    assert (reloaded.bos_id, reloaded.eos_id, reloaded.pad_id) == (1, 2, 0)


def test_sentencepiece_gguf_vocabulary_is_refused_by_kind(tmp_path):
    write_vocab_gguf(tmp_path / "spm.gguf", tokenizer_model="llama")
    with pytest.raises(TokenizerError, match="'llama' tokenizer; only byte-level BPE"):
        load_tokenizer(tmp_path / "spm.gguf")
