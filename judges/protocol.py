"""What a judge needs from a language model: chat in, texts out. Judges import no engine; whoever runs a
judge passes any object of this shape (`pipelines/engines/chat.py` wraps every prefsmith engine into one,
`pipelines/engines/openai_client.py:OpenAIChat` is one for any OpenAI-compatible server).
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

Messages = list[dict[str, Any]]


class Reply(str):
    """An assistant reply: the text itself (it *is* a str, so a model may return plain strings), plus the
    tokens it cost when the model reports them (None when it does not), and `error`: the reason when the model
    refused this one conversation (say `too_long: ...`, a prompt past its context window) while answering the
    others; the text is then empty, and asking again would not help.

    >>> r = Reply("Score: 7", prompt_tokens=120, completion_tokens=4)
    >>> r == "Score: 7", r.tokens
    (True, 124)
    """

    prompt_tokens: int | None
    completion_tokens: int | None
    error: str | None

    def __new__(cls, text: str, prompt_tokens: int | None = None, completion_tokens: int | None = None,
                error: str | None = None) -> "Reply":
        reply = super().__new__(cls, text)
        reply.prompt_tokens, reply.completion_tokens, reply.error = prompt_tokens, completion_tokens, error
        return reply

    @property
    def tokens(self) -> int | None:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def as_reply(text: str) -> Reply:
    """A model's reply as a `Reply` (a plain str gets unknown token counts)."""
    return text if isinstance(text, Reply) else Reply(text)


@runtime_checkable
class ChatModel(Protocol):
    name: str  # recorded next to each verdict, e.g. "hf:/models/judge"

    def chat(self, conversations: Sequence[Messages], *, n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0) -> list[list[str]]:
        """For each conversation, `n` assistant replies (str or `Reply`). A conversation's replies depend only
        on it and on `seed`, not on the other conversations of the call (so a judged dataset reproduces on
        resume)."""
        ...
