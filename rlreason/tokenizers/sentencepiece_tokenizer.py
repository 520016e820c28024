"""A sentencepiece tokenizer, and training one on a task corpus for the tiny models."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from rlreason.tokenizers.base import REASONING_TAGS, Tokenizer, TokenizerError
from rlreason.tokenizers.chat import read_chat_template, stop_ids, write_tokenizer_config

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_proto: bytes, source: str = "<memory>", chat_template: str | None = None):
        self.model_proto = model_proto
        self.chat_template = chat_template
        try:
            self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, OSError) as error:
            raise TokenizerError(f"sentencepiece model {source} cannot be read: {error}") from None
        self.pad_id = self._processor.pad_id()
        self.eos_id = self._processor.eos_id()
        bos = self._processor.bos_id()
        self.bos_id = bos if bos >= 0 else None
        if self.pad_id < 0:  # models trained elsewhere often have no pad piece; EOS is never attended after
            self.pad_id = self.eos_id
        self.stop_ids = stop_ids(self)

    @classmethod
    def load(cls, path: str | Path) -> "SentencePieceTokenizer":
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"sentencepiece model {str(path)!r} does not exist")
        return cls(path.read_bytes(), source=repr(str(path)), chat_template=read_chat_template(path.parent))

    def save_to(self, directory: str | Path) -> str:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "tokenizer.model").write_bytes(self.model_proto)
        if self.chat_template:
            write_tokenizer_config(directory, {}, self.chat_template)
        return "tokenizer.model"

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def decode(self, ids: list[int]) -> str:
        # Models often have more embedding rows than the tokenizer has pieces; such ids decode to nothing.
        controls = {self.pad_id, self.bos_id, *self.stop_ids}
        size = self.vocab_size
        return self._processor.decode([int(i) for i in ids if int(i) not in controls and 0 <= int(i) < size])

    def token_to_id(self, token: str) -> int | None:
        token_id = self._processor.piece_to_id(token)
        if token_id == self._processor.unk_id() and token != self._processor.id_to_piece(token_id):
            return None
        return token_id

    def is_special(self, token_id: int) -> bool:
        return 0 <= token_id < self.vocab_size and self._processor.is_control(token_id)


def train_sentencepiece(lines: Iterable[str], vocab_size: int, byte_fallback: bool = False) -> SentencePieceTokenizer:
    """Trains a BPE sentencepiece model on `lines` with the R1 tags as single pieces.

    Ids: pad 0, unk 1, bos 2, eos 3, then `<think>`, `</think>`, `<answer>`, `</answer>`. Digits are split
    into single pieces so that arithmetic stays digit-wise.
    """
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, model_type="bpe", vocab_size=vocab_size,
        user_defined_symbols=list(REASONING_TAGS), byte_fallback=byte_fallback, split_digits=True,
        character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        hard_vocab_limit=False, num_threads=2, minloglevel=2, remove_extra_whitespaces=False, add_dummy_prefix=False,
        normalization_rule_name="identity")
    return SentencePieceTokenizer(buffer.getvalue())
