"""Process rewards: a solution's steps, the token layout a process reward model (PRM) reads, and the PRM as a
reward (`--reward prm:DIR[:min|prod|last|mean]`).

The layout is TRL's stepwise-supervision convention (its `PRMTrainer.tokenize_row`), so a PRM trained here or
with TRL reads the same ids:

    [BOS] prompt  step_1 SEP  step_2 SEP  ...  step_n SEP        (each piece tokenized on its own, no specials)
                          ^            ^                 ^        the last token of each SEP: one score per step

A chat prompt (a message list) is rendered with the tokenizer's chat template and an open assistant turn
instead (`rewards.chat.prompt_ids`; TRL takes text prompts only). The score of a step is the PRM's
probability of label 1 ("this step is still on a path to the right answer") at its separator token.

`split_steps` is the one rule that cuts a completion into steps, used by `prefsmith prm-label` and by the
scorer below; docs/prm.md has the rest.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rewards.chat import completion_text, is_messages, prompt_ids
from rewards.result import RewardResult, scores
from rewards.rm import model_folder

DEFAULT_SEPARATOR = "\n"  # TRL's PRMConfig.step_separator, for a PRM that records none
AGGREGATES = ("min", "prod", "last", "mean")


@dataclass(frozen=True)
class Step:
    text: str  # the step, whitespace-stripped
    end: int  # where the next step begins in the completion (after the delimiter that follows this one)


def split_steps(text: str, separator: str | None = "\n\n", regex: str | None = None) -> list[Step]:
    """Cut `text` at every `separator` (or every match of `regex`); empty pieces are dropped.

    `text[:steps[i].end]` is the completion's own text through step i and its delimiter: the prefix a
    continuation starts from.

    >>> [(s.text, s.end) for s in split_steps("a\\n\\nb\\n\\n\\n\\nc")]
    [('a', 3), ('b', 8), ('c', 9)]
    """
    if regex is not None:
        cuts = [(m.start(), m.end()) for m in re.finditer(regex, text)]  # zero-width (lookahead) cuts too
    else:
        if not separator:
            raise ValueError("give a non-empty step separator or a step regex")
        cuts, at = [], text.find(separator)
        while at >= 0:
            cuts.append((at, at + len(separator)))
            at = text.find(separator, at + len(separator))
    steps, start = [], 0
    for begin, end in [*cuts, (len(text), len(text))]:
        piece = text[start:begin].strip()
        if piece:
            steps.append(Step(piece, end))
        elif steps:  # an empty piece (repeated delimiters): the previous step's prefix runs on to here
            steps[-1] = Step(steps[-1].text, end)
        start = end
    return steps


def step_inputs(tokenizer: Any, prompt: Any, steps: Sequence[str], separator: str) -> tuple[list[int], list[int]]:
    """(input ids, index of each step's scored token) in the layout of the module docstring."""
    if is_messages(prompt):
        ids = prompt_ids(tokenizer, prompt)
    else:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string or a list of messages, got {type(prompt).__name__}")
        ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
    sep = list(tokenizer.encode(separator, add_special_tokens=False))
    if not sep:
        raise ValueError(f"the step separator {separator!r} has no tokens")
    positions = []
    for step in steps:
        ids += list(tokenizer(step, add_special_tokens=False)["input_ids"]) + sep
        positions.append(len(ids) - 1)
    return ids, positions


def aggregate(values: Sequence[float], how: str) -> float:
    """One solution score from its step scores: the weakest step (`min`, Math-Shepherd), the product (`prod`,
    Lightman et al.), the last step's, or the mean."""
    if how == "min":
        return min(values)
    if how == "prod":
        return math.prod(values)
    if how == "last":
        return values[-1]
    if how == "mean":
        return sum(values) / len(values)
    raise ValueError(f"unknown PRM aggregate {how!r}: use one of {', '.join(AGGREGATES)}")


def model_separator(model_dir: str | os.PathLike) -> str:
    """The step separator a PRM was trained with (`prefsmith_train.json`), else TRL's default."""
    path = Path(model_dir) / "prefsmith_train.json"
    if path.is_file():
        sep = json.loads(path.read_text()).get("step_separator")
        if sep:
            return sep
    return DEFAULT_SEPARATOR


def parse_reason(reason: str) -> list[float]:
    """The per-step scores a `prm` reason carries: 'min of 3 steps [0.9, 0.2, 0.1]' -> [0.9, 0.2, 0.1]."""
    start = reason.find("[")
    return json.loads(reason[start:]) if start >= 0 else []


class ProcessRewardModel:
    """A loaded token-classification PRM (loads on construction so a bad path fails before any work).

        prm = ProcessRewardModel("runs/prm", how="min")
        prm.step_scores(prompt, ["Start with 3.", "Add 4: 7."])    # -> [0.97, 0.91]
        prm.results(prompts, completions)                          # -> RewardResults, reasons carry the steps
    """

    __name__ = "prm_reward"

    def __init__(self, model: str, how: str = "min", device: str | None = None, batch_size: int = 16,
                 separator: str | None = None) -> None:
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        if how not in AGGREGATES:
            raise ValueError(f"prm:{model}:{how}: unknown aggregate; use one of {', '.join(AGGREGATES)}")
        self.model_name, self.how = model, how
        self.batch_size = max(1, int(batch_size))
        self.device = device or os.environ.get("PREFSMITH_RM_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_folder(model))
            self.model = AutoModelForTokenClassification.from_pretrained(model_folder(model), dtype="auto")
        except Exception as e:
            raise ValueError(f"prm:{model}: could not load a token-classification model and tokenizer "
                             f"({type(e).__name__}: {e}). Pass a `prefsmith train prm` output folder.") from None
        if self.model.config.num_labels != 2:
            raise ValueError(f"prm:{model}: the model has {self.model.config.num_labels} labels; a PRM has 2")
        self.model.to(self.device).eval()
        self.separator = separator or model_separator(model_folder(model))
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = limit if limit and limit < 10**9 else None

    def batch_step_scores(self, prompts: Sequence[Any], steps: Sequence[Sequence[str]]) -> list[list[float] | None]:
        """P(label 1) at each step's separator token, per row; None where the row exceeds the model's context."""
        import torch

        inputs = [step_inputs(self.tokenizer, p, s, self.separator) for p, s in zip(prompts, steps)]
        out: list[list[float] | None] = [None] * len(inputs)
        order = sorted((i for i, (ids, _) in enumerate(inputs) if not self.max_length or len(ids) <= self.max_length),
                       key=lambda i: len(inputs[i][0]))
        with torch.no_grad():
            for b in range(0, len(order), self.batch_size):
                idx = order[b: b + self.batch_size]
                width = max(len(inputs[i][0]) for i in idx)
                ids = torch.tensor([inputs[i][0] + [self.pad_id] * (width - len(inputs[i][0])) for i in idx])
                mask = torch.tensor([[1] * len(inputs[i][0]) + [0] * (width - len(inputs[i][0])) for i in idx])
                probs = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
                                   ).logits.float().softmax(-1)[..., 1].cpu()
                for row, i in enumerate(idx):
                    out[i] = [float(probs[row, t]) for t in inputs[i][1]]
        return out

    def step_scores(self, prompt: Any, steps: Sequence[str]) -> list[float] | None:
        return self.batch_step_scores([prompt], [steps])[0]

    def results(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[RewardResult]:
        out = [RewardResult(None, "bad_completion")] * len(completions)
        todo: list[tuple[int, list[str]]] = []
        for i, c in enumerate(completions):
            try:
                steps = [s.text for s in split_steps(completion_text(c), self.separator)]
            except TypeError:
                continue
            if steps:
                todo.append((i, steps))
            else:
                out[i] = RewardResult(0.0, "no_steps")
        values = self.batch_step_scores([prompts[i] for i, _ in todo], [s for _, s in todo])
        for (i, steps), v in zip(todo, values):
            if v is None:
                out[i] = RewardResult(None, "too_long", {"max_length": self.max_length})
            else:
                reason = f"{self.how} of {len(v)} steps {json.dumps([round(x, 4) for x in v])}"
                out[i] = RewardResult(aggregate(v, self.how), reason, {"steps": v})
        return out

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        return scores(self.results(prompts, completions, **columns))
