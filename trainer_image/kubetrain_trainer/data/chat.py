"""Conversations as token ids with a mask of the assistant's tokens.

The text is the tokenizer's chat template applied by transformers
(`apply_chat_template`); a tokenizer without one gets DEFAULT_CHAT_TEMPLATE. The
assistant's part of turn i is what rendering messages[:i+1] adds to rendering
messages[:i] with the generation prompt: the reply and its end marker, never the
role header. This holds for any template whose renderings of a conversation's
prefixes are prefixes of its rendering; one that is not is refused by name.
"""

from __future__ import annotations

from typing import Any

from kubetrain_trainer.data.hf_tokenizer import PretrainedTokenizer
from kubetrain_trainer.data.readers import BadRecord, Record, field

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML-style; used when neither data.chat_template nor the tokenizer has one."""

ROLES = ("system", "user", "assistant", "tool")


def messages_of(record: Record, name: str) -> list[dict[str, str]]:
    """The record's messages, checked: a list of {role, content} with an assistant turn."""
    messages = field(record, name, list)
    checked: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        where = f"{record.where}: field {name!r}[{i}]"
        if not isinstance(message, dict):
            raise BadRecord(f"{where} is not an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadRecord(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise BadRecord(f"{where}: content is not a string")
        checked.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in checked):
        raise BadRecord(f"{record.where}: field {name!r} has no assistant message to learn")
    return checked


class ChatRenderer:
    """Renders conversations and finds the assistant's characters and tokens."""

    def __init__(self, tokenizer: PretrainedTokenizer, template: str | None) -> None:
        self.tokenizer = tokenizer
        self.template = template or tokenizer.hf.chat_template or DEFAULT_CHAT_TEMPLATE

    def _render(self, messages: list[dict[str, str]], prompt: bool) -> str:
        text: Any = self.tokenizer.hf.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=prompt
        )
        return str(text)

    def spans(self, messages: list[dict[str, str]], where: str) -> tuple[str, list[range]]:
        """The rendered conversation and the character ranges of the assistant's turns."""
        full = self._render(messages, prompt=False)
        spans: list[range] = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:i], prompt=True) if i else ""
            through = self._render(messages[: i + 1], prompt=False)
            if not (full.startswith(through) and through.startswith(before)):
                raise BadRecord(
                    f"{where}: the chat template renders turn {i} differently inside the "
                    "whole conversation, so its assistant tokens cannot be found; set "
                    "data.chat_template to a template without turn-dependent text"
                )
            spans.append(range(len(before), len(through)))
        return full, spans

    def encode(self, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[bool]]:
        """Token ids of the conversation and, per token, whether the assistant wrote it."""
        text, spans = self.spans(messages, where)
        ids, offsets = self.tokenizer.encode_with_offsets(text)
        assistant = [any(start in span for span in spans) for start, _ in offsets]
        return ids, assistant
