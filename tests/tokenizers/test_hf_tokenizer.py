"""The tokenizer.json backend and chat templates, checked against transformers' own tokenizer and renderer."""

from __future__ import annotations

import json
import os

import pytest
import tokenizers
from tokenizers import pre_tokenizers, trainers

os.environ["HF_HUB_OFFLINE"] = "1"
import transformers  # noqa: E402

from rlreason.tokenizers import HFTokenizer, TokenizerError, load_tokenizer, train_sentencepiece  # noqa: E402
from rlreason.tokenizers.chat import render_chat  # noqa: E402
from rlreason.tokenizers.templates import render_prompt  # noqa: E402

# A Qwen-like template: whitespace control, loop controls, tojson, namespace and raise_exception.
CHAT_TEMPLATE = """{%- set ns = namespace(system=false) %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}{% set ns.system = true %}{% endif %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('unknown role ' + message['role']) }}
    {%- endif %}
    {%- if message['content'] == 'skip me' %}{% continue %}{% endif %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor %}
{%- if not ns.system %}{{- '<|meta|>' + {'a': 'é<b>'} | tojson + '\\n' }}{% endif %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{% endif %}"""
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["What is 12 plus 30? The answer is 42.", "Paris is the capital of France.", "naïve café"] * 30


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A trained byte-level BPE tokenizer.json with a tokenizer_config.json as transformers writes one."""
    directory = tmp_path_factory.mktemp("tokenizer")
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "special": True}, "pad_token": "<|endoftext|>",
        "chat_template": [{"name": "default", "template": CHAT_TEMPLATE}, {"name": "tool_use", "template": "x"}]}))
    return directory


@pytest.fixture(scope="module")
def reference(tokenizer_dir):
    return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


def test_encode_decode_and_special_ids_match_transformers(tokenizer_dir, reference):
    tokenizer = load_tokenizer(tokenizer_dir / "tokenizer.json")
    assert isinstance(tokenizer, HFTokenizer)
    for text in ["What is 12 plus 30?", " naïve  café\n", "<|im_start|>user\nhi<|im_end|>", "日本"]:
        assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False), text
    assert (tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id) == (2, 0, None)
    ids = tokenizer.encode("<|im_start|>Paris<|im_end|>") + [tokenizer.pad_id]
    assert tokenizer.decode(ids) == "<|im_start|>Paris"
    assert tokenizer.vocab_size == len(reference)


def test_chat_prompt_matches_transformers_render(tokenizer_dir, reference):
    tokenizer = load_tokenizer(tokenizer_dir / "tokenizer.json")
    conversations = [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "skip me"},
         {"role": "user", "content": "Hi"}],
    ]
    for messages in conversations:
        expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_chat(tokenizer.chat_template, messages, special_tokens=tokenizer.special_token_strings()) \
            == expected
    assert render_prompt("What is 2+2?", "chat", tokenizer) == reference.apply_chat_template(
        conversations[0], tokenize=False, add_generation_prompt=True)


# Templates that close an assistant reply with a control token, with plain text, or refuse to render.
TURN_END_TEMPLATES = {
    "im_end": (CHAT_TEMPLATE, 2),
    "plain_text": ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", None),
    "refuses": ("{{ raise_exception('no assistant turns') }}", None),
}


@pytest.mark.parametrize("name", TURN_END_TEMPLATES)
def test_stop_ids_add_the_templates_turn_end_token(tokenizer_dir, tmp_path, name):
    """With EOS `<|endoftext|>` (as Qwen base models have), a template that ends replies with `<|im_end|>` makes
    that a stop token too, and decode drops it like EOS."""
    template, turn_end = TURN_END_TEMPLATES[name]
    (tmp_path / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                                "chat_template": template}))
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    assert tokenizer.stop_ids == ((0,) if turn_end is None else (0, turn_end))
    ids = tokenizer.encode("Paris<|im_end|><|endoftext|>")
    assert tokenizer.decode(ids) == ("Paris<|im_end|>" if turn_end is None else "Paris")


def test_turn_end_equal_to_eos_is_one_stop_token(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir / "tokenizer.json")
    assert tokenizer.stop_ids == (tokenizer.eos_id,) == (2,)
    assert [tokenizer.is_special(token_id) for token_id in (0, 1, 2, tokenizer.encode("Paris")[0])] == \
        [True, True, True, False]


def test_template_errors_are_tokenizer_errors(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir / "tokenizer.json")
    with pytest.raises(TokenizerError, match="unknown role tool"):
        render_chat(tokenizer.chat_template, [{"role": "tool", "content": "x"}])
    with pytest.raises(TokenizerError, match="not valid Jinja"):
        render_chat("{% for %}", [])


def test_save_to_keeps_chat_template_and_special_tokens(tokenizer_dir, tmp_path, reference):
    original = load_tokenizer(tokenizer_dir / "tokenizer.json")
    file_name = original.save_to(tmp_path)
    reloaded = load_tokenizer(tmp_path / file_name)
    assert reloaded.chat_template == CHAT_TEMPLATE
    assert (reloaded.eos_id, reloaded.pad_id, reloaded.bos_id) == (original.eos_id, original.pad_id, None)
    saved_in_transformers = transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "Hi"}]
    assert saved_in_transformers.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_template_file_takes_precedence(tokenizer_dir, tmp_path):
    load_tokenizer(tokenizer_dir / "tokenizer.json").save_to(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
    assert render_prompt("hey", "chat", load_tokenizer(tmp_path / "tokenizer.json")) == "hey!"


def test_missing_eos_token_is_explained(tokenizer_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    with pytest.raises(TokenizerError, match="names no eos_token.*tokenizer_config.json"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_chat_template_needs_a_tokenizer_that_has_one(tokenizer_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(TokenizerError, match="has none"):
        render_prompt("hi", "chat", load_tokenizer(tmp_path / "tokenizer.json"))


def test_unknown_tokenizer_file_kind_is_refused(tmp_path):
    with pytest.raises(TokenizerError, match="cannot tell the tokenizer kind.*vocab.txt"):
        load_tokenizer(tmp_path / "vocab.txt")


def test_sentencepiece_tokenizer_keeps_the_chat_template_of_its_folder(tmp_path):
    original = train_sentencepiece(CORPUS, vocab_size=60)
    original.save_to(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    loaded = load_tokenizer(tmp_path / "hf" / "tokenizer.model")
    reloaded = load_tokenizer(tmp_path / "saved" / loaded.save_to(tmp_path / "saved"))
    assert reloaded.chat_template == CHAT_TEMPLATE
    assert render_prompt("Hi", "chat", reloaded).endswith("<|im_start|>user\nHi<|im_end|>\n"
                                                          "<|meta|>{\"a\": \"é<b>\"}\n<|im_start|>assistant\n")
    assert load_tokenizer(tmp_path / "plain" / original.save_to(tmp_path / "plain")).chat_template is None
