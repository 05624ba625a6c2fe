"""Any prefsmith engine as the judges' `ChatModel` (judges/protocol.py), so a judge runs on hf, vllm or an
OpenAI-compatible server without importing an engine.

    judge_model = EngineChat(load_engine("hf", "path/to/model"))
    judge_model.chat([[{"role": "user", "content": "Is 2 + 2 = 4? Answer yes or no."}]])  # -> [["yes"]]
"""
from __future__ import annotations

from typing import Any, Sequence

from .base import Engine, SamplingConfig


class EngineChat:
    """Wraps an engine (`generate(prompts, SamplingConfig, seeds)`) into `chat(conversations, ...)`.

    Every conversation is seeded with `seed` itself, so its replies do not depend on which other
    conversations share the call (the engines draw each prompt's samples from its own seed)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = f"{engine.name}:{engine.model}"

    def chat(self, conversations: Sequence[list[dict[str, Any]]], *, n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0) -> list[list[str]]:
        sampling = SamplingConfig(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        results = self.engine.generate([list(c) for c in conversations], sampling, [seed] * len(conversations))
        return [[s.text for s in samples] for samples in results]

    def close(self) -> None:
        self.engine.close()
