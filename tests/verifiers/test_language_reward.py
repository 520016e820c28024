"""language_consistency: the share of the chain of thought's letters in the target language's script, counted
by hand on mixed-language completions."""

from __future__ import annotations

import pytest

from rlreason.verifiers.base import get_reward_fn

score = get_reward_fn("language_consistency")


@pytest.mark.parametrize("completion, metadata, expected", [
    ("<think>add 3 and 4</think> <answer>7</answer>", {}, 1.0),  # digits and spaces are not letters
    ("<think>abc中文</think> <answer>abc中文中文</answer>", {}, 3 / 5),  # only the <think> text counts
    ("<think>abc中文</think> <answer>7</answer>", {"language": "zh"}, 2 / 5),
    ("<think>Сумма = sum</think>", {"language": "ru"}, 5 / 8),
    ("no tags here, всё", {}, 10 / 13),  # without <think>…</think>, the whole completion
    ("<think>3 + 4 = 7</think> <answer>7</answer>", {}, 0.0),  # no letters
    ("<think>ひらがなと漢字</think>", {"language": "ja"}, 1.0),
])
def test_the_share_of_letters_in_the_target_script(completion, metadata, expected):
    assert score("", completion, "", metadata) == pytest.approx(expected, abs=1e-12)


def test_an_unknown_language_is_refused():
    with pytest.raises(ValueError, match="metadata language 'xx' is not one of"):
        score.fn("", "<think>a</think>", "", {"language": "xx"})
