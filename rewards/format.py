"""Format rewards: the R1 `<think>` template, one final `\\boxed{}` answer, a user regex, and DAPO's soft
overlong penalty.

Each comes as a `*_results` function (scores with reasons, what the label stage records) and a TRL-signature
reward function (floats), so it ports to `GRPOTrainer(reward_funcs=[...])` unchanged:

    think_format_reward(None, ["<think>2+2=4</think> 4"])                  # -> [1.0]
    regex_format_reward(r"\\d+")(None, ["42", "forty-two"])                # -> [1.0, 0.0]
    overlong_reward(20480, 4096)(None, ["..."], completion_ids=[[1] * 18000])  # -> [-0.46875]

A format check can always decide, so these never return null for a string completion; a completion that is
neither a string nor a list of chat messages gets null with reason `bad_completion`. The overlong penalty
needs a length in tokens: it reads the `completion_ids` column, or counts tokens with a tokenizer you pass,
and gives null (`no_completion_ids`) when it has neither, rather than guessing a length from characters.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from rewards.chat import MessageError, completion_text
from rewards.result import RewardResult, scores, trl_reward

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def _texts(completions: Sequence[Any]) -> list[str | None]:
    out: list[str | None] = []
    for c in completions:
        try:
            out.append(completion_text(c))
        except MessageError:
            out.append(None)
    return out


def think_format_check(text: str) -> RewardResult:
    """The R1 template on one completion: one `<think>...</think>` block at the start, then a non-empty answer.

    Leading whitespace is allowed. Any other shape scores 0 with a reason: `no_think_start`, `unclosed_think`,
    `nested_think` (a `<think>` inside the block), `multiple_think` (a second block), `stray_close_think`
    (an extra `</think>`), `empty_answer` (nothing but whitespace after the block).
    """
    s = text.lstrip()
    if not s.startswith(THINK_OPEN):
        return RewardResult(0.0, "no_think_start")
    close = s.find(THINK_CLOSE)
    second_open = s.find(THINK_OPEN, len(THINK_OPEN))
    if close == -1:
        return RewardResult(0.0, "nested_think" if second_open != -1 else "unclosed_think")
    if second_open != -1:
        return RewardResult(0.0, "nested_think" if second_open < close else "multiple_think")
    answer = s[close + len(THINK_CLOSE):]
    if THINK_CLOSE in answer:
        return RewardResult(0.0, "stray_close_think")
    if not answer.strip():
        return RewardResult(0.0, "empty_answer")
    return RewardResult(1.0, "ok", {"think_chars": close - len(THINK_OPEN), "answer_chars": len(answer.strip())})


def think_format_results(prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any) -> list[RewardResult]:
    """R1 template check for each completion (see `think_format_check`): 1.0 or 0.0 with a reason.

    >>> [r.reason for r in think_format_results(None, ["<think>a</think> b", "<think>a</think><think>b</think> c"])]
    ['ok', 'multiple_think']
    """
    return [RewardResult(None, "bad_completion") if t is None else think_format_check(t) for t in _texts(completions)]


think_format_reward = trl_reward(think_format_results)
think_format_reward.__module__ = __name__  # pickle finds it here, not in rewards.result


BOXED = "\\boxed{"


def boxed_format_check(text: str) -> RewardResult:
    r"""Exactly one `\boxed{...}` with balanced braces and something inside: 1.0, else 0.0 with a reason
    (`no_boxed`, `unclosed_boxed`, `empty_boxed`, `multiple_boxed`). The shaping reward for math policies that
    have not yet learned to mark their answer; it says nothing about whether the answer is right.

    >>> [boxed_format_check(t).reason for t in ["so \\boxed{4}.", "4", "\\boxed{}", "\\boxed{1} \\boxed{2}"]]
    ['ok', 'no_boxed', 'empty_boxed', 'multiple_boxed']
    """
    start = text.find(BOXED)
    if start == -1:
        return RewardResult(0.0, "no_boxed")
    depth, i = 1, start + len(BOXED)
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    if depth:
        return RewardResult(0.0, "unclosed_boxed")
    if not text[start + len(BOXED):i - 1].strip():
        return RewardResult(0.0, "empty_boxed")
    if BOXED in text[i:]:
        return RewardResult(0.0, "multiple_boxed")
    return RewardResult(1.0, "ok")


def boxed_format_results(prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any) -> list[RewardResult]:
    """`boxed_format_check` for each completion; null (`bad_completion`) for a value that is not a completion."""
    return [RewardResult(None, "bad_completion") if t is None else boxed_format_check(t) for t in _texts(completions)]


boxed_format_reward = trl_reward(boxed_format_results)
boxed_format_reward.__module__ = __name__


class RegexFormat:
    """1.0 when the whole completion matches `pattern` (`re.fullmatch`, with `re.DOTALL` so `.` spans lines).

    A class rather than a closure so it pickles into worker processes; `__name__` is what TRL logs.
    """

    __name__ = "regex_format_reward"

    def __init__(self, pattern: str):
        try:
            self.regex = re.compile(pattern, re.DOTALL)
        except re.error as e:
            raise ValueError(f"format reward: invalid regular expression {pattern!r}: {e}") from None
        self.pattern = pattern

    def results(self, prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any) -> list[RewardResult]:
        return [RewardResult(None, "bad_completion") if t is None
                else RewardResult(1.0, "ok") if self.regex.fullmatch(t) else RewardResult(0.0, "no_match")
                for t in _texts(completions)]

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        return scores(self.results(prompts, completions, **columns))

    def __repr__(self) -> str:
        return f"regex_format_reward({self.pattern!r})"


def regex_format_reward(pattern: str) -> RegexFormat:
    """A TRL reward: 1.0 if the completion fully matches `pattern` (DOTALL), else 0.0. `.results` gives reasons.

    >>> regex_format_reward(r"<answer>.*</answer>")(None, ["<answer>\\n42\\n</answer>", "42"])
    [1.0, 0.0]
    """
    return RegexFormat(pattern)


def soft_overlong_penalty(length: int, max_len: int, cache: int) -> float:
    """DAPO Eq. 13: 0 up to `max_len - cache` tokens, then a linear ramp down to -1 at `max_len`, -1 beyond."""
    free = max_len - cache
    if length <= free:
        return 0.0
    if length <= max_len:
        return (free - length) / cache
    return -1.0


class Overlong:
    """DAPO's soft overlong punishment as a reward (add it to a correctness reward). Picklable; see module doc.

    Length is `len(completion_ids[i])` when that column is given (for a multi-turn trajectory, the policy's tokens:
    the ones `completion_mask` marks 1, so tool outputs do not count), else the token count from `tokenizer`
    (a tokenizer object or a local path), else null with reason `no_completion_ids`.
    """

    __name__ = "overlong_reward"

    def __init__(self, max_len: int, cache: int, tokenizer: Any = None):
        if cache < 1 or max_len <= cache:
            raise ValueError(f"overlong reward: need 0 < cache < max_len (DAPO uses 20480,4096), got max_len={max_len}, "
                             f"cache={cache}")
        self.max_len, self.cache = int(max_len), int(cache)
        self._tokenizer = tokenizer

    def tokenizer(self):
        if isinstance(self._tokenizer, str):
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer)
            except Exception as e:  # transformers raises OSError/ValueError/...: the user needs the path and cause
                raise ValueError(f"overlong reward: could not load tokenizer {self._tokenizer!r}: {e}") from None
        return self._tokenizer

    def results(self, prompts: Sequence[Any] | None, completions: Sequence[Any],
                completion_ids: Sequence[Sequence[int] | None] | None = None,
                completion_mask: Sequence[Sequence[int] | None] | None = None, **columns: Any) -> list[RewardResult]:
        ids = list(completion_ids) if completion_ids is not None else [None] * len(completions)
        masks = list(completion_mask) if completion_mask is not None else [None] * len(completions)
        out = []
        for text, tokens, mask in zip(_texts(completions), ids, masks):
            if tokens is not None and mask is not None:  # a trajectory: the policy's tokens, not the tool outputs
                length = int(sum(mask))
            elif tokens is not None:
                length = len(tokens)
            elif self._tokenizer is not None and text is not None:
                length = len(self.tokenizer()(text, add_special_tokens=False)["input_ids"])
            else:
                out.append(RewardResult(None, "no_completion_ids"))
                continue
            score = soft_overlong_penalty(length, self.max_len, self.cache)
            reason = "ok" if score == 0.0 else "over_max" if score == -1.0 and length > self.max_len else "soft_penalty"
            out.append(RewardResult(score, reason, {"length": length}))
        return out

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        return scores(self.results(prompts, completions, **columns))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if not isinstance(state["_tokenizer"], (str, type(None))):
            state["_tokenizer"] = getattr(state["_tokenizer"], "name_or_path", None)
        return state

    def __repr__(self) -> str:
        return f"overlong_reward({self.max_len}, {self.cache})"


def overlong_reward(max_len: int, cache: int, tokenizer: Any = None) -> Overlong:
    """A TRL reward: DAPO soft overlong penalty in [-1, 0]; `.results` gives reasons and lengths.

    >>> overlong_reward(100, 20)(None, ["x"], completion_ids=[[0] * 90])
    [-0.5]
    """
    return Overlong(max_len, cache, tokenizer)
