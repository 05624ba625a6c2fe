"""Pointwise judging: a rubric and one response -> a score on the rubric's scale.

    judge = PointwiseJudge(model, load_rubric("helpfulness"))
    judge(["What is 2 + 2?"], ["4"])   # -> [RewardResult(score=9.0, reason="ok", info={"raw": ..., ...})]

A `PointwiseJudge` is a reward with TRL's signature (`judge(prompts, completions, **columns)`), returning
`RewardResult`s: the score is the judge's number on the rubric's scale (not rescaled), or None with reason
`unparseable` (no readable score after `cfg.retries` retries), `no_reference` (a reference-guided rubric and
a row with no gold answer) or the model's refusal of that one request (`too_long: ...`: the prompt does not fit
the judge's context window; not asked again). `info` holds `raw` (the judge's last reply), `tokens`,
`attempts`, `judge` (the model's name) and `rubric`.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

from rewards.result import RewardResult

from .prompts import pointwise_messages
from .protocol import ChatModel
from .rubrics import Rubric
from .verdicts import JudgeConfig, ask, parse_score


class PointwiseJudge:
    def __init__(self, model: ChatModel, rubric: Rubric, cfg: JudgeConfig = JudgeConfig(),
                 reference_column: str = "answer") -> None:
        self.model, self.rubric, self.cfg, self.reference_column = model, rubric, cfg, reference_column
        self.__name__ = f"judge_{rubric.name}"  # the label stage names a reward after its function

    def judge(self, prompts: Sequence[Any], completions: Sequence[Any],
              references: Sequence[Any] | None = None) -> list[RewardResult]:
        refs = list(references) if references is not None else [None] * len(prompts)
        todo = [i for i in range(len(prompts)) if not self.rubric.reference or refs[i] is not None]
        conversations = [pointwise_messages(self.rubric, prompts[i], completions[i], refs[i]) for i in todo]
        asked = dict(zip(todo, ask(self.model, conversations, functools.partial(parse_score, scale=self.rubric.scale),
                                   self.cfg)))
        out = []
        for i in range(len(prompts)):
            got = asked.get(i)
            if got is None:
                out.append(RewardResult(None, "no_reference", {"judge": self.model.name, "rubric": self.rubric.name}))
                continue
            info = {"raw": got.raw, "tokens": got.tokens, "attempts": got.attempts, "judge": self.model.name,
                    "rubric": self.rubric.name}
            out.append(RewardResult(got.value, got.error or ("ok" if got.value is not None else "unparseable"), info))
        return out

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[RewardResult]:
        refs = columns.get(self.reference_column) if self.rubric.reference else None
        if self.rubric.reference and refs is None:
            raise ValueError(f"rubric {self.rubric.name} compares with a reference answer: the rows need a "
                             f"{self.reference_column!r} column")
        return self.judge(prompts, completions, refs)
