"""The result every built-in reward produces: a score plus the reason for it.

A zero always says why (`no_answer`, `wrong`, `timeout`, `too_large`...), and a null (`score=None`) means the
data or the infrastructure failed (`bad_gold`, `sandbox_error`, `error: ...`), never a silent 0 or 1. The rule
is in docs/rewards.md ("What null means").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class RewardResult:
    score: float | None
    reason: str = "ok"
    info: dict[str, Any] = field(default_factory=dict)


def scores(results: Sequence[RewardResult]) -> list[float | None]:
    return [r.score for r in results]


def trl_reward(results_fn: Callable[..., list[RewardResult]]) -> Callable[..., list[float | None]]:
    """Wrap a `(prompts, completions, **columns) -> list[RewardResult]` function into TRL's float signature.

    The wrapper keeps the detailed function as `.results` so the label stage can record reasons.
    """

    def reward(prompts, completions, **columns) -> list[float | None]:
        return scores(results_fn(prompts, completions, **columns))

    reward.__name__ = results_fn.__name__.removesuffix("_results") + "_reward"
    reward.__module__ = results_fn.__module__  # so pickle finds it as module.name
    reward.__qualname__ = reward.__name__
    reward.__doc__ = results_fn.__doc__
    reward.results = results_fn  # type: ignore[attr-defined]
    return reward
