"""Chat templates: a model's Jinja template rendered as transformers renders it.

The template sees `messages`, `add_generation_prompt` and the special-token strings (`bos_token`,
`eos_token`, ...), with transformers' helpers `raise_exception`, `strftime_now` and its `tojson` filter, in a
sandboxed environment with `trim_blocks` and `lstrip_blocks`, so that prompts match the model's training format.

Templates are stored beside a tokenizer file as transformers stores them (tokenizer_config.json or
chat_template.jinja), so every tokenizer backend keeps its template in a model directory.
"""

from __future__ import annotations

import datetime
import json
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rlreason.tokenizers.base import Tokenizer, TokenizerError

# Where transformers keeps a tokenizer's settings and, in recent versions, its chat template.
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"


def read_tokenizer_config(directory: str | Path) -> dict:
    """tokenizer_config.json in `directory` as a dict ({} when there is none)."""
    path = Path(directory) / TOKENIZER_CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_chat_template(directory: str | Path) -> str | None:
    """The chat template stored in `directory`: chat_template.jinja, else tokenizer_config.json's
    `chat_template` (a string, or a list of named templates of which "default" is the chat one)."""
    template_path = Path(directory) / TEMPLATE_FILE
    if template_path.is_file():
        return template_path.read_text()
    entry = read_tokenizer_config(directory).get("chat_template")
    if isinstance(entry, list):
        named = {item["name"]: item["template"] for item in entry}
        return named.get("default", next(iter(named.values()), None))
    return entry


def write_tokenizer_config(directory: str | Path, config: dict, chat_template: str | None) -> None:
    """Writes tokenizer_config.json (with the chat template, if any) as transformers reads it."""
    directory = Path(directory)
    with_template = {**config, "chat_template": chat_template} if chat_template else config
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(with_template, indent=2, ensure_ascii=False))
    # A template file left by an earlier save would take precedence over the one just written.
    (directory / TEMPLATE_FILE).unlink(missing_ok=True)


def _raise_exception(message: str):
    raise TokenizerError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own filter escapes HTML characters, which would change the prompt text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(date_format: str) -> str:
    return datetime.datetime.now().strftime(date_format)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise TokenizerError(f"the chat template is not valid Jinja (line {error.lineno}: {error.message})") from None


def render_chat(template: str, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                special_tokens: dict[str, str] | None = None) -> str:
    """The text of `messages` ([{"role": ..., "content": ...}]) under a Jinja chat template.

    special_tokens: the strings the template may name, e.g. {"bos_token": "<s>", "eos_token": "</s>"}.
    """
    return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **(special_tokens or {}))


# The reply `turn_end_id` renders: text that no template rewrites, so that it can be found again.
_PROBE_REPLY = "rlreason probe reply"


def turn_end_id(tokenizer: Tokenizer) -> int | None:
    """The control token a chat template writes right after an assistant's reply (`<|im_end|>`,
    `<end_of_turn>`, `<|eot_id|>`): a chat model ends its turn with it, and it need not be the EOS token (Qwen
    base models: EOS `<|endoftext|>`, turns end with `<|im_end|>`). None without a template, when the template
    closes a reply with plain text, or when it refuses a one-exchange conversation."""
    if not tokenizer.chat_template:
        return None
    messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _PROBE_REPLY}]
    try:
        text = render_chat(tokenizer.chat_template, messages, add_generation_prompt=False,
                           special_tokens=tokenizer.special_token_strings())
    except (TokenizerError, jinja2.TemplateError):
        return None
    _, probe, after_reply = text.rpartition(_PROBE_REPLY)
    ids = tokenizer.encode(after_reply.lstrip()) if probe else []
    return ids[0] if ids and tokenizer.is_special(ids[0]) else None


def stop_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The tokens that end a completion: EOS, then the chat template's end-of-turn token where that differs."""
    turn_end = turn_end_id(tokenizer)
    return (tokenizer.eos_id,) if turn_end in (None, tokenizer.eos_id) else (tokenizer.eos_id, turn_end)


def chat_prompt(question: str, tokenizer: Tokenizer) -> str:
    """The prompt for a one-turn conversation asking `question`, ready for the assistant's reply."""
    if not tokenizer.chat_template:
        raise TokenizerError("template 'chat' needs a tokenizer with a chat template; this one has none "
                             "(use a model imported with its tokenizer_config.json or GGUF metadata)")
    return render_chat(tokenizer.chat_template, [{"role": "user", "content": question}],
                       special_tokens=tokenizer.special_token_strings())
