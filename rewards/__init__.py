"""Reward functions with TRL's signature: `fn(prompts, completions, **columns) -> list[float | None]`.

A leaf library: nothing here imports from pipelines/, judges/ or trainers/. Heavy imports are lazy so
`from rewards import math_reward` is cheap and picklable functions can go to worker processes.
"""
from __future__ import annotations

import importlib

from rewards.chat import completion_text
from rewards.result import RewardResult, trl_reward

_LAZY = {
    "math_reward": "rewards.math",
    "math_last_number_reward": "rewards.math",
    "code_reward": "rewards.code",
    "code_fraction_reward": "rewards.code",
    "think_format_reward": "rewards.format",
    "regex_format_reward": "rewards.format",
    "overlong_reward": "rewards.format",
}

__all__ = ["RewardResult", "completion_text", "trl_reward", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")
