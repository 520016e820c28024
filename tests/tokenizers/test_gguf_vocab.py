"""The vocabulary embedded in GGUF metadata, checked against transformers building its tokenizer from the same file.

The files are written as llama.cpp writes vocabularies: a byte-level BPE (`gpt2`: tokens and merges) and a
sentencepiece BPE (`llama`: pieces and scores, merges left for the reader to derive).
"""

from __future__ import annotations

import io
import json
import os

import gguf
import pytest
import sentencepiece as spm
import tokenizers
from tokenizers import pre_tokenizers, trainers

os.environ["HF_HUB_OFFLINE"] = "1"
import transformers  # noqa: E402

from rlreason.tokenizers import TokenizerError, load_tokenizer  # noqa: E402
from rlreason.tokenizers.templates import render_prompt  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" \
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ("the quick brown fox jumps over lazy dog answer question capital france paris hello world spaced "
         "tokenizer vocabulary merges reasoning thinking héllo wörld").split()
# Enough distinct words that both vocabularies learn a few hundred merges, whose order then matters.
CORPUS = [" ".join(WORDS[(i * j + i) % len(WORDS)] for j in range(9)) + f" {i * 37}." for i in range(300)]
TEXTS = ["What is 12 plus 345?", "  héllo\n\nwörld 2024", "<|im_start|>user<|im_end|><think>x", "日本 ok",
         " Hello", "the lazy tokenizer thinks about reasoning over vocabulary merges in paris, france"]


def _write_vocabulary(path, architecture: str, model: str, tokens: list[str], token_types: list[int],
                      add_vocabulary) -> None:
    """A GGUF file holding only a vocabulary; `add_vocabulary(writer)` adds the model-specific keys."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    add_vocabulary(writer)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_byte_level_gguf(path, architecture: str = "llama") -> None:
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=600, special_tokens=CONTROL_TOKENS,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(backend.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get) + ["<think>"]
    token_types = [gguf.TokenType.CONTROL if token in CONTROL_TOKENS else
                   gguf.TokenType.USER_DEFINED if token == "<think>" else gguf.TokenType.NORMAL for token in tokens]
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in model["merges"]]

    def add_vocabulary(writer):
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_merges(merges)

    _write_vocabulary(path, architecture, "gpt2", tokens, token_types, add_vocabulary)


def write_sentencepiece_gguf(path, architecture: str = "llama") -> None:
    """Pieces, scores and types as llama.cpp's `_create_vocab_sentencepiece` writes them."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buffer, model_type="bpe", vocab_size=600, byte_fallback=True,
        user_defined_symbols=["<think>"], control_symbols=["<|im_start|>", "<|im_end|>"], unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_proto=buffer.getvalue())
    pieces = [processor.id_to_piece(index) for index in range(processor.get_piece_size())]

    def piece_type(index: int) -> gguf.TokenType:
        if processor.is_unknown(index):
            return gguf.TokenType.UNKNOWN
        if processor.is_control(index):
            return gguf.TokenType.CONTROL
        if processor.is_byte(index):
            return gguf.TokenType.BYTE
        return gguf.TokenType.USER_DEFINED if pieces[index] == "<think>" else gguf.TokenType.NORMAL

    def add_vocabulary(writer):
        writer.add_token_scores([processor.get_score(index) for index in range(len(pieces))])

    _write_vocabulary(path, architecture, "llama", pieces, [piece_type(i) for i in range(len(pieces))],
                      add_vocabulary)


@pytest.fixture(scope="module", params=["byte_level", "sentencepiece"])
def vocab_gguf(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / f"{request.param}.gguf"
    {"byte_level": write_byte_level_gguf, "sentencepiece": write_sentencepiece_gguf}[request.param](path)
    return path


def test_gguf_vocabulary_encodes_and_decodes_like_transformers(vocab_gguf):
    tokenizer = load_tokenizer(vocab_gguf)
    reference = transformers.AutoTokenizer.from_pretrained(vocab_gguf.parent, gguf_file=vocab_gguf.name)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False), text
        # The interface drops pad, BOS and the stop tokens when decoding; transformers keeps them.
        content_ids = [i for i in ids if i not in (tokenizer.bos_id, tokenizer.pad_id, *tokenizer.stop_ids)]
        assert tokenizer.decode(ids) == reference.decode(content_ids), text
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 0)
    # EOS and the chat template's turn end, which is EOS itself in the byte-level vocabulary only.
    assert set(tokenizer.stop_ids) == {2, tokenizer.token_to_id("<|im_end|>")}
    assert tokenizer.token_to_id("<think>") == reference.convert_tokens_to_ids("<think>")


def test_gguf_tokenizer_saved_in_a_model_dir_keeps_its_chat_template(vocab_gguf, tmp_path):
    tokenizer = load_tokenizer(vocab_gguf)
    reloaded = load_tokenizer(tmp_path / tokenizer.save_to(tmp_path))
    prompt = render_prompt("What is 12 plus 345?", "chat", reloaded)
    assert prompt == "<|im_start|>user\nWhat is 12 plus 345?<|im_end|>\n<|im_start|>assistant\n"
    assert reloaded.encode(prompt) == tokenizer.encode(prompt)
    assert (reloaded.bos_id, reloaded.eos_id, reloaded.pad_id) == (1, 2, 0)


def test_gemma_sentencepiece_vocabulary_is_refused_by_kind(tmp_path):
    write_sentencepiece_gguf(tmp_path / "gemma.gguf", architecture="gemma2")
    with pytest.raises(TokenizerError, match="'llama' tokenizer for architecture 'gemma2'"):
        load_tokenizer(tmp_path / "gemma.gguf")
