"""Reading a judge's reply, and asking again when it cannot be read.

- `parse_score(text, scale)`: the number of the last JSON object with a `score` key, else of the last
  `Score: N` line; None when there is none or it is outside the scale.
- `parse_winner(text, ties)`: "A", "B" or "tie" from the last JSON object with a `winner` key, else the last
  `Winner: X` / `[[X]]`; None when there is none (or a tie the rubric does not allow).
- `ask(model, conversations, parse, cfg)`: one `chat` call for every conversation, then again for those whose
  reply did not parse, up to `cfg.retries` more times. Retry k is sent with seed `cfg.seed + k` and
  temperature `max(cfg.temperature, cfg.retry_temperature)`: a greedy judge would repeat its malformed reply
  (and a cache would return it) if asked the same way.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .protocol import ChatModel, as_reply

_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_SCORE_LINE = re.compile(r"(?im)\bscore\W{0,3}[:=]\s*\**\s*(-?\d+(?:\.\d+)?)")
_WINNER_LINE = re.compile(r"(?im)\b(?:winner|verdict)\W{0,3}[:=]\s*\**\s*\[*\s*(response\s+)?(A|B|tie)\b")
_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)


def _json_field(text: str, key: str) -> Any:
    """The value of `key` in the last JSON object of `text` that has it (None when no object has it)."""
    for match in reversed(_JSON_OBJECT.findall(text)):
        try:
            obj = json.loads(match)
        except ValueError:
            continue
        if isinstance(obj, dict) and key in obj:
            return obj[key]
    return None


def parse_score(text: str, scale: tuple[float, float]) -> float | None:
    """
    >>> parse_score('Clear and correct.\\n{"score": 8}', (1, 10))
    8.0
    >>> parse_score("Score: 11", (1, 10)) is None  # outside the scale
    True
    """
    value = _json_field(text, "score")
    if value is None:
        found = _SCORE_LINE.findall(text)
        value = found[-1] if found else None
    try:
        score = float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
    if score is None or not math.isfinite(score) or not scale[0] <= score <= scale[1]:
        return None
    return score


def _winner(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    word = value.strip().strip("[]").strip().lower().removeprefix("response").strip()
    return {"a": "A", "b": "B", "tie": "tie", "c": "tie", "draw": "tie", "equal": "tie"}.get(word)


def parse_winner(text: str, ties: bool = True) -> str | None:
    """
    >>> parse_winner('B covers every step.\\n{"winner": "B"}')
    'B'
    >>> parse_winner("Both are fine. [[C]]", ties=False) is None
    True
    """
    winner = _winner(_json_field(text, "winner"))
    if winner is None:
        found = _WINNER_LINE.findall(text)
        winner = _winner(found[-1][1]) if found else None
    if winner is None:
        found = _BRACKETED.findall(text)
        winner = _winner(found[-1]) if found else None
    if winner == "tie" and not ties:
        return None
    return winner


@dataclass(frozen=True)
class JudgeConfig:
    retries: int = 2  # a reply that does not parse is asked again up to this many times
    temperature: float = 0.0
    retry_temperature: float = 0.7  # temperature of those retries
    max_new_tokens: int = 512
    seed: int = 0


@dataclass
class Asked:
    """One conversation's outcome: the parsed verdict (None: never parsed), the last reply, how many replies it
    took, and the tokens they cost (None when the model reports none)."""
    value: Any = None
    raw: str = ""
    attempts: int = 0
    tokens: int | None = None
    error: str | None = None  # the model refused the conversation (Reply.error): not asked again


def ask(model: ChatModel, conversations: Sequence[list[dict]], parse: Callable[[str], Any],
        cfg: JudgeConfig) -> list[Asked]:
    out = [Asked() for _ in conversations]
    pending = list(range(len(conversations)))
    for attempt in range(cfg.retries + 1):
        if not pending:
            break
        temperature = cfg.temperature if attempt == 0 else max(cfg.temperature, cfg.retry_temperature)
        replies = model.chat([conversations[i] for i in pending], n=1, temperature=temperature,
                             max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + attempt)
        still = []
        for i, (reply, *_) in zip(pending, replies):
            reply = as_reply(reply)
            got = out[i]
            got.raw, got.attempts = str(reply), got.attempts + 1
            if reply.tokens is not None:
                got.tokens = (got.tokens or 0) + reply.tokens
            if reply.error:
                got.error = reply.error
                continue
            got.value = parse(str(reply))
            if got.value is None:
                still.append(i)
        pending = still
    return out
