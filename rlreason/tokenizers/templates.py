"""Prompt templates: how a question becomes the text the model continues."""

from __future__ import annotations

from rlreason.tokenizers.base import REASONING_TAGS, Tokenizer, TokenizerError
from rlreason.tokenizers.chat import chat_prompt

# DeepSeek-R1-Zero's template (DeepSeek-R1 paper, table 1).
R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {question}. Assistant:"
)
# The same contract in few tokens, for tiny models with short contexts.
R1_SHORT = "User: {question}\nAssistant:"

TEMPLATES = {"r1_zero": R1_ZERO, "r1_short": R1_SHORT, "plain": "{question}"}


def render_prompt(question: str, template: str, tokenizer: Tokenizer | None = None) -> str:
    """The prompt text for `question` under `template`; "chat" renders the tokenizer's own chat template."""
    if template == "chat":
        if tokenizer is None:
            raise TokenizerError("template 'chat' needs the tokenizer whose chat template it renders")
        return chat_prompt(question, tokenizer)
    return TEMPLATES[template].format(question=question)


def check_reasoning_tags(tokenizer: Tokenizer) -> None:
    """Raises a TokenizerError naming any R1 tag that the tokenizer cannot represent as text."""
    for tag in REASONING_TAGS:
        if tokenizer.decode(tokenizer.encode(tag)) != tag:
            raise TokenizerError(f"tokenizer cannot round-trip the tag {tag!r}")
