"""The R1 completion structure `<think>…</think> <answer>…</answer>`: the format reward and answer extraction.

The completion text is judged as it is, without the prompt: a template whose prompt ends with `<think>` leaves
the completion without its opening tag, and `r1_format` scores such completions 0 (the project's templates
end with "Assistant:"). "Whitespace" is `str.isspace()`, the set the token-level versions use too.

Every check here is a linear scan (`str.count`, `str.index`, `str.strip`), so no input needs capping.
"""

from __future__ import annotations

from rlreason.tokenizers.base import REASONING_TAGS
from rlreason.verifiers.base import reward_function

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = REASONING_TAGS


def extract_answer(completion: str) -> str | None:
    """The text between the only `<answer>` and the only `</answer>`, which must follow it; else None.

    A second tag of either kind makes the answer ambiguous (`<answer><answer>1</answer></answer>`), so None.
    Text after `</answer>` is allowed here; `r1_format` is the reward that forbids it.
    """
    if completion.count(ANSWER_OPEN) != 1 or completion.count(ANSWER_CLOSE) != 1:
        return None
    start = completion.index(ANSWER_OPEN) + len(ANSWER_OPEN)
    end = completion.index(ANSWER_CLOSE)
    return completion[start:end] if start <= end else None


_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_BOXED = "\\boxed{"


def _boxed_content(text: str) -> str | None:
    """The content of `\\boxed{…}` when that box is all of `text`; else None."""
    if not text.startswith(_BOXED):
        return None
    depth = 1
    for index in range(len(_BOXED), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[len(_BOXED):index] if index == len(text) - 1 else None
    return None


def unwrap(answer: str) -> str:
    """`answer` without surrounding whitespace, a final period, and wrappers that hold all of it: `$…$`,
    `$$…$$`, `\\(…\\)`, `\\[…\\]`, `\\boxed{…}`, repeatedly (`$\\boxed{3}$.` gives `3`)."""
    while True:
        text = answer.strip().removesuffix(".").strip()
        for opening, closing in _WRAPPERS:
            if len(text) >= len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing):
                text = text[len(opening):-len(closing)]
                break
        else:
            boxed = _boxed_content(text)
            text = text if boxed is None else boxed
        if text == answer:
            return text
        answer = text


def is_r1_formatted(completion: str) -> bool:
    """True if each R1 tag occurs exactly once, in order, with only whitespace before `<think>`, between
    `</think>` and `<answer>`, and after `</answer>`."""
    if any(completion.count(tag) != 1 for tag in REASONING_TAGS):
        return False
    think_open, think_close, answer_open, answer_close = (completion.index(tag) for tag in REASONING_TAGS)
    if not think_open < think_close < answer_open < answer_close:
        return False
    outside = (completion[:think_open], completion[think_close + len(THINK_CLOSE):answer_open],
               completion[answer_close + len(ANSWER_CLOSE):])
    return all(not part.strip() for part in outside)


@reward_function("r1_format")
def r1_format(prompt: str, completion: str, gold: str, metadata: dict) -> float:
    """1.0 for an R1-formatted completion (see `is_r1_formatted`), else 0.0."""
    return 1.0 if is_r1_formatted(completion) else 0.0
