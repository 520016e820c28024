"""Language consistency (DeepSeek-R1, section 2.3.3): the share of the chain of thought written in the target
language, so that RL does not drift into mixing languages.

Measured by script, with no model: of the letters in the `<think>` text (the whole completion when it has no
`<think>…</think>`), the share whose Unicode script is the target language's. Digits, punctuation, symbols
and whitespace are not letters and do not count; a chain of thought without letters scores 0. The target is
the row's metadata field `language` (an ISO 639-1 code of SCRIPTS; give it with task.metadata_fields), or
English. It is a linear scan over the text, so no input needs capping.
"""

from __future__ import annotations

import unicodedata

from rlreason.verifiers.base import reward_function
from rlreason.verifiers.format import THINK_CLOSE, THINK_OPEN

# Language -> the prefixes of the Unicode character names of its scripts' letters.
SCRIPTS = {
    "en": ("LATIN",), "fr": ("LATIN",), "de": ("LATIN",), "es": ("LATIN",), "pt": ("LATIN",), "it": ("LATIN",),
    "zh": ("CJK",), "ja": ("CJK", "HIRAGANA", "KATAKANA"), "ko": ("HANGUL", "CJK"), "ru": ("CYRILLIC",),
    "uk": ("CYRILLIC",), "el": ("GREEK",), "ar": ("ARABIC",), "he": ("HEBREW",), "hi": ("DEVANAGARI",),
    "th": ("THAI",),
}
DEFAULT_LANGUAGE = "en"


def chain_of_thought(completion: str) -> str:
    """The text between the first `<think>` and the `</think>` after it, else the whole completion."""
    start = completion.find(THINK_OPEN)
    end = completion.find(THINK_CLOSE, start + len(THINK_OPEN)) if start >= 0 else -1
    return completion[start + len(THINK_OPEN):end] if end >= 0 else completion


def target_share(text: str, language: str) -> float:
    """The share of the letters of `text` whose script is `language`'s (0 when it has no letters)."""
    scripts = SCRIPTS[language]
    letters = [character for character in text if unicodedata.category(character).startswith("L")]
    if not letters:
        return 0.0
    return sum(unicodedata.name(letter, "").startswith(scripts) for letter in letters) / len(letters)


@reward_function("language_consistency")
def language_consistency(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """The share of the chain of thought's letters in the target language's script (module docstring)."""
    language = metadata.get("language", DEFAULT_LANGUAGE)
    if language not in SCRIPTS:
        raise ValueError(f"language_consistency: metadata language {language!r} is not one of "
                         f"{', '.join(sorted(SCRIPTS))}")
    return target_share(chain_of_thought(completion), language)
