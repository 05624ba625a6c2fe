"""Chat messages: what counts as one, its text, and its rendering through a chat template. Every package uses
these (rewards, judges, pipelines, trainers), so they live in the leaf library.

The rule, once:
- a chat ("messages") is a non-empty list of dicts that each have a `role` (`is_messages`); anything else
  in a prompt or completion column is a plain string;
- a message's text is its `content`: a string, with None or a missing `content` counting as "";
- `completion_text` is what a reward scores: a string as is, or the *last* message's content (TRL's
  conversational completion is `[{"role": "assistant", "content": ...}]`);
- `conversation_text` is what hygiene and length counts compare: a string as is, or *every* message's
  content joined by "\\n" (None stays None);
- anything else (a number, a list holding non-dicts, non-text content) raises `MessageError`.

A chat goes through the tokenizer's chat template once (`render_chat`), and the rendered text is tokenized
without special tokens, since the template already writes any BOS (`chat_ids`). `prompt_ids` is the one
answer to "which token ids does the model see for this prompt", shared by the engines and the trainers.
"""
from __future__ import annotations

from typing import Any, Sequence

Messages = list[dict[str, Any]]


class MessageError(TypeError, ValueError):
    """A value that is neither a string nor a list of `{role, content}` messages. A TypeError (what rewards
    catch to give `bad_completion`) and a ValueError (what hygiene stages turn into a row-naming UserError)."""


def is_messages(value: Any) -> bool:
    """Whether `value` is a chat: a non-empty list of dicts that each have a `role`.

    >>> is_messages([{"role": "user", "content": "hi"}]), is_messages("hi"), is_messages([])
    (True, False, False)
    """
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def as_messages(value: str | Messages, role: str) -> Messages:
    """A string as one message of `role`; a message list as a list of copies of its messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [dict(m) for m in value]


def message_text(message: Any) -> str:
    """The content of one message (see the rule in the module docstring)."""
    if not isinstance(message, dict):
        raise MessageError(f"a message must be a {{role, content}} object, got {type(message).__name__}")
    content = message.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise MessageError(f"message content must be text, got {type(content).__name__}")
    return content


def completion_text(completion: Any) -> str:
    """Text of a completion in either TRL format: a plain string, or a message list (its last message's
    content); a single message dict gives its content.

    >>> completion_text([{"role": "assistant", "content": "4"}])
    '4'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return message_text(completion)
    if isinstance(completion, list) and completion:
        return message_text(completion[-1])
    raise MessageError(f"completion must be a string or a list of messages, got {type(completion).__name__}")


def conversation_text(value: Any) -> str | None:
    """Text of a whole field: a string as is, None as None, a message list as its contents joined by "\\n".

    >>> conversation_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    'a\\nb'
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "\n".join(message_text(m) for m in value)
    raise MessageError(f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}")


def render_chat(tokenizer: Any, messages: Sequence[dict], *, add_generation_prompt: bool = False,
                continue_final_message: bool = False, tools: list[dict] | None = None) -> str:
    """`messages` through the tokenizer's chat template, as text. `add_generation_prompt` opens an assistant
    turn after the last message; `continue_final_message` leaves the last (assistant) message open; `tools`
    (JSON schemas) go to the template, which describes them in its own format."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                                         continue_final_message=continue_final_message, tools=tools)


def chat_ids(tokenizer: Any, messages: Sequence[dict], *, add_generation_prompt: bool = False,
             continue_final_message: bool = False, tools: list[dict] | None = None) -> list[int]:
    """Token ids of `render_chat(...)`, tokenized without special tokens (the template holds any BOS)."""
    text = render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt,
                       continue_final_message=continue_final_message, tools=tools)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, prompt: str | Messages, tools: list[dict] | None = None) -> list[int]:
    """Token ids the model sees for a prompt, before the first completion token (engines and trainers agree).

    A string is tokenized with the tokenizer's usual special tokens (as vLLM and the `completions` endpoint do).
    A chat is rendered with an open assistant turn (`add_generation_prompt`); a chat ending in an assistant
    message is continued, not closed (`continue_final_message`).
    """
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    continue_final = bool(prompt) and prompt[-1].get("role") == "assistant"
    return chat_ids(tokenizer, prompt, add_generation_prompt=not continue_final, continue_final_message=continue_final,
                    tools=tools)
