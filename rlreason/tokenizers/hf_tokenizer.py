"""A Hugging Face `tokenizers` tokenizer (a `tokenizer.json`), with its special tokens and chat template.

On disk it is what transformers writes: `tokenizer.json` plus `tokenizer_config.json` holding the special
tokens' text and the chat template (or the template in `chat_template.jinja`), so that a model directory
written here also loads with `AutoTokenizer`.
"""

from __future__ import annotations

from pathlib import Path

import tokenizers

from rlreason.tokenizers.base import Tokenizer, TokenizerError
from rlreason.tokenizers.chat import (TOKENIZER_CONFIG_FILE, read_chat_template, read_tokenizer_config, stop_ids,
                                      write_tokenizer_config)

TOKENIZER_FILE = "tokenizer.json"
_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token")


def _token_text(entry) -> str | None:
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    return entry.get("content") if isinstance(entry, dict) else entry


class HFTokenizer(Tokenizer):
    """special_tokens: {"eos_token": text, "bos_token": text or absent, "pad_token": text or absent}."""

    def __init__(self, backend: tokenizers.Tokenizer, special_tokens: dict[str, str | None],
                 chat_template: str | None = None, source: str = "<memory>"):
        self.backend = backend
        self.chat_template = chat_template
        self._special_tokens = {key: text for key, text in special_tokens.items() if text is not None}
        ids = {}
        for key, text in self._special_tokens.items():
            ids[key] = backend.token_to_id(text)
            if ids[key] is None:
                raise TokenizerError(f"tokenizer {source}: its {key} {text!r} is not in the vocabulary")
        if "eos_token" not in ids:
            raise TokenizerError(f"tokenizer {source} names no eos_token (expected in {TOKENIZER_CONFIG_FILE} next to "
                                 f"{TOKENIZER_FILE}); sampling needs one to stop")
        self.eos_id = ids["eos_token"]
        self.bos_id = ids.get("bos_token")
        # EOS as padding is safe: nothing is attended after a row's stop token.
        self.pad_id = ids.get("pad_token", self.eos_id)
        self._special_ids = {token_id for token_id, token in backend.get_added_tokens_decoder().items()
                             if token.special}
        self.stop_ids = stop_ids(self)

    @classmethod
    def load(cls, path: str | Path) -> "HFTokenizer":
        """From a tokenizer.json (or a folder holding one), reading tokenizer_config.json beside it."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {str(path)!r} does not exist")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library raises a bare Exception for a malformed file
            raise TokenizerError(f"tokenizer file {str(path)!r} cannot be read: {error}") from None
        config = read_tokenizer_config(path.parent)
        special_tokens = {key: _token_text(config.get(key)) for key in _SPECIAL_KEYS}
        return cls(backend, special_tokens, read_chat_template(path.parent), source=repr(str(path)))

    def save_to(self, directory: str | Path) -> str:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / TOKENIZER_FILE))
        write_tokenizer_config(directory, {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
                                           "add_eos_token": False, **self._special_tokens}, self.chat_template)
        return TOKENIZER_FILE

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        controls = {self.pad_id, self.bos_id, *self.stop_ids}
        return self.backend.decode([int(i) for i in ids if int(i) not in controls], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def special_token_strings(self) -> dict[str, str]:
        return dict(self._special_tokens)
