import pytest

from rlreason.tokenizers import REASONING_TAGS, TokenizerError, load_tokenizer, train_sentencepiece

LINES = [f"User: What is {a}+{b}?\nAssistant: <think>{a}+{b}={a + b}</think> <answer>{a + b}</answer>"
         for a in range(40) for b in range(0, 40, 7)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_sentencepiece(LINES, vocab_size=80)


def test_reasoning_tags_are_single_pieces(tokenizer):
    for tag in REASONING_TAGS:
        ids = tokenizer.encode(tag)
        assert ids == [tokenizer.token_to_id(tag)], (tag, ids)


@pytest.mark.parametrize("text", [
    "<think>12+30=42</think> <answer>42</answer>",
    "User: What is 7+5?\nAssistant: <think>7+5=12</think><answer>12</answer>",
    "  What  is\n\nthe <answer> 3 </answer>",
])
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_byte_fallback_round_trips_unseen_characters():
    tokenizer = train_sentencepiece(LINES, vocab_size=300, byte_fallback=True)
    text = "naïve ∑ <think>x</think>\t<answer>１２</answer>"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("<answer>")[0] == tokenizer.token_to_id("<answer>")


def test_digits_are_split(tokenizer):
    assert len(tokenizer.encode("12345")) == 5


def test_special_ids_and_decode_drops_controls(tokenizer):
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id) == (0, 3, 2)
    assert tokenizer.stop_ids == (3,)
    assert [tokenizer.is_special(token_id) for token_id in (0, 2, 3, tokenizer.encode("7")[0])] == \
        [True, True, True, False]
    ids = tokenizer.encode("<answer>7</answer>")
    assert tokenizer.decode(ids + [tokenizer.eos_id, tokenizer.pad_id]) == "<answer>7</answer>"
    # ids past the tokenizer's vocabulary (a model's padded embedding rows) decode to nothing
    assert tokenizer.decode(ids + [tokenizer.vocab_size, 10_000]) == "<answer>7</answer>"


def test_save_and_load(tokenizer, tmp_path):
    name = tokenizer.save_to(tmp_path)
    loaded = load_tokenizer(tmp_path / name)
    assert loaded.encode("<think>1+2=3</think>") == tokenizer.encode("<think>1+2=3</think>")


def test_missing_and_unknown_files_are_refused(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "none.model")
    (tmp_path / "broken.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="cannot be read"):
        load_tokenizer(tmp_path / "broken.model")


def test_single_token_id_names_the_missing_token(tokenizer):
    with pytest.raises(TokenizerError, match="'<tool_call>'"):
        tokenizer.single_token_id("<tool_call>")
