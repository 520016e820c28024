"""The tokenizer interface every backend implements (sentencepiece, HF tokenizer.json, GGUF vocabulary)."""

from __future__ import annotations

import abc

# The R1 tags; tokenizers trained by the project hold each as a single piece.
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable, or lacks a token the configuration needs."""


class Tokenizer(abc.ABC):
    """Text <-> token ids, with the special ids the sampler and the data pipeline need."""

    pad_id: int
    eos_id: int
    bos_id: int | None
    # The tokens that end a completion: EOS, then the chat template's end-of-turn token where that differs
    # (see `chat.stop_ids`). Samplers stop on any of them and `decode` drops them.
    stop_ids: tuple[int, ...]
    chat_template: str | None = None  # a Jinja chat template, for backends whose model ships one

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS/EOS added."""

    @abc.abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; the control tokens that frame a completion (pad, BOS, the stop tokens) are dropped."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of a token that is one whole piece of the vocabulary, else None."""

    @abc.abstractmethod
    def is_special(self, token_id: int) -> bool:
        """True for a control token (BOS, EOS, a chat template's turn markers): one that marks structure and
        never stands for text."""

    @abc.abstractmethod
    def save_to(self, directory) -> str:
        """Writes the tokenizer file(s) into `directory`; returns the main file's name (for load_tokenizer)."""

    def special_token_strings(self) -> dict[str, str]:
        """The special tokens a chat template may name (`bos_token`, `eos_token`, `pad_token`) as text."""
        return {}

    def single_token_id(self, token: str) -> int:
        """Like `token_to_id`, but raises a TokenizerError naming the token when it is not one piece."""
        token_id = self.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"tokenizer has no single token for {token!r}; the template or verifier "
                                 f"that needs it cannot be used with this vocabulary")
        return token_id
