"""Pairwise judging: a rubric and two responses -> which is better, asked in both orders.

Position bias is the best-known failure of LLM judges (Zheng et al. 2023, "Judging LLM-as-a-Judge"): many
prefer whichever response comes first. So every pair is judged twice, (first as A, second as B) and (second
as A, first as B), and the swap rule decides:

| order 1 says | order 2 says | result                                       |
| ------------ | ------------ | -------------------------------------------- |
| first        | first        | score 1.0, reason `first`                    |
| second       | second       | score 0.0, reason `second`                   |
| tie          | tie          | score 0.5, reason `tie` (rubric allows ties) |
| anything else that parsed   | | None, reason `position_inconsistent`        |
| either order unreadable     | | None, reason `unparseable` (after retries)  |
| either order refused        | | None, the refusal (`too_long: ...`)         |

A tie in one order and a win in the other is inconsistent too. With a rubric that has `ties: false` a "tie"
reply does not parse (it is asked again). `info` holds `verdicts` (each order's reply in the prompt's own
letters, e.g. ["A", "A"] for a judge that always picks A), `raw` (both replies), `tokens`, `attempts`,
`judge` and `rubric`.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

from rewards.result import RewardResult

from .prompts import pairwise_messages
from .protocol import ChatModel
from .rubrics import Rubric
from .verdicts import JudgeConfig, ask, parse_winner

# order 1 shows (first, second) as (A, B); order 2 shows (second, first)
_ORDER1 = {"A": "first", "B": "second", "tie": "tie"}
_ORDER2 = {"A": "second", "B": "first", "tie": "tie"}
SCORES = {"first": 1.0, "second": 0.0, "tie": 0.5}


def swap_rule(order1: str | None, order2: str | None) -> tuple[float | None, str]:
    """Both orders' verdicts (in the prompt's letters) -> (score of `first`, reason); see the table above.

    >>> swap_rule("A", "B"), swap_rule("A", "A")
    ((1.0, 'first'), (None, 'position_inconsistent'))
    """
    if order1 is None or order2 is None:
        return None, "unparseable"
    one, two = _ORDER1[order1], _ORDER2[order2]
    if one != two:
        return None, "position_inconsistent"
    return SCORES[one], one


class PairwiseJudge:
    def __init__(self, model: ChatModel, rubric: Rubric, cfg: JudgeConfig = JudgeConfig()) -> None:
        self.model, self.rubric, self.cfg = model, rubric, cfg

    def judge(self, prompts: Sequence[Any], firsts: Sequence[Any], seconds: Sequence[Any],
              references: Sequence[Any] | None = None) -> list[RewardResult]:
        """For each i, whether `firsts[i]` beats `seconds[i]` as an answer to `prompts[i]` (score 1, 0, 0.5 or
        None: see the module docstring)."""
        n = len(prompts)
        refs = list(references) if references is not None else [None] * n
        todo = [i for i in range(n) if not self.rubric.reference or refs[i] is not None]
        conversations = []
        for i in todo:
            conversations.append(pairwise_messages(self.rubric, prompts[i], firsts[i], seconds[i], refs[i]))
            conversations.append(pairwise_messages(self.rubric, prompts[i], seconds[i], firsts[i], refs[i]))
        parse = functools.partial(parse_winner, ties=self.rubric.ties)
        asked = ask(self.model, conversations, parse, self.cfg)
        by_row = {i: (asked[2 * k], asked[2 * k + 1]) for k, i in enumerate(todo)}
        out = []
        for i in range(n):
            if i not in by_row:
                out.append(RewardResult(None, "no_reference", {"judge": self.model.name, "rubric": self.rubric.name}))
                continue
            one, two = by_row[i]
            refused = one.error or two.error
            score, reason = (None, refused) if refused else swap_rule(one.value, two.value)
            tokens = None if one.tokens is None and two.tokens is None else (one.tokens or 0) + (two.tokens or 0)
            out.append(RewardResult(score, reason, {
                "verdicts": [one.value, two.value], "raw": [one.raw, two.raw], "tokens": tokens,
                "attempts": [one.attempts, two.attempts], "judge": self.model.name, "rubric": self.rubric.name}))
        return out
