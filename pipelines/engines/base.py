"""The one interface every generation engine implements.

Prompts are either plain strings (sent as-is) or chat message lists (rendered with the model's own chat
template exactly once, by the engine or by the server). For each prompt an engine returns `n` samples.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence, Union

Prompt = Union[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sample:
    text: str
    token_ids: list[int] | None
    # log-prob of each sampled token under the distribution it was sampled from (after temperature and top-p);
    # None when the backend does not return them (e.g. `transformers serve`).
    logprobs: list[float] | None
    finish_reason: str  # "stop" | "length" | "error:<why>"


class Engine(Protocol):
    name: str
    model: str

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig, seeds: Sequence[int]) -> list[list[Sample]]:
        """Return, for each prompt, `sampling.n` samples. `seeds[i]` seeds prompt i, so a prompt's samples do
        not depend on which other prompts share its batch (this is what makes kill-and-resume reproduce an
        uninterrupted run exactly)."""
        ...

    def close(self) -> None: ...
