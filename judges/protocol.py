"""What a judge needs from a language model: chat in, texts out. Judges import no engine; whoever runs a
judge passes any object of this shape (`pipelines/engines/chat.py` wraps every prefsmith engine into one).
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

Messages = list[dict[str, Any]]


@runtime_checkable
class ChatModel(Protocol):
    name: str  # recorded next to each verdict, e.g. "hf:/models/judge"

    def chat(self, conversations: Sequence[Messages], *, n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0) -> list[list[str]]:
        """For each conversation, `n` assistant replies. A conversation's replies depend only on it and on
        `seed`, not on the other conversations of the call (so a judged dataset reproduces on resume)."""
        ...
