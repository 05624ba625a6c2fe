"""Reward-model reward: a sequence-classification model's score for prompt + completion.

    rm = RewardModel("path/to/reward-model")          # AutoModelForSequenceClassification, num_labels=1
    rm(prompts, completions)                          # TRL signature -> [float, ...]

The text scored is the conversation put through the model's own chat template: the prompt's messages (a plain
string prompt becomes one user message) plus the completion as the assistant turn. A tokenizer without a chat
template scores `prompt + completion` as plain text. The score is `logits[:, 0]` at the last non-padding
token, the way TRL's GRPOTrainer reads a model reward. Batches are sorted by length, right-padded, and run
under `torch.no_grad()`; a row longer than the model's context gets null (`too_long`) rather than a score of
a truncated text.

Device: the `device` argument, else the `PREFSMITH_RM_DEVICE` environment variable, else `cuda` when
available, else `cpu`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from rewards.chat import as_messages, completion_text, conversation_text, render_chat
from rewards.result import RewardResult, scores

DEVICE_ENV = "PREFSMITH_RM_DEVICE"


def model_folder(model: str) -> str:
    """The folder to load for `model`: every `prefsmith train` run leaves its final model in OUTPUT/model, so a run
    directory with no config.json of its own stands for the model inside it (`--model runs/dpo`, `rm:runs/rm`);
    a model folder itself (an older run's OUTPUT included), or a hub name, is returned as given."""
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").exists() and (path / "model" / "config.json").is_file():
        return str(path / "model")
    return model


def _messages(prompt: Any, completion: Any) -> list[dict[str, str]]:
    msgs = [{"role": m["role"], "content": m["content"]} for m in as_messages(prompt, "user")]
    if isinstance(completion, list):
        msgs += [{"role": m.get("role", "assistant"), "content": m["content"]} for m in completion]
    else:
        msgs.append({"role": "assistant", "content": completion_text(completion)})
    return msgs


class RewardModel:
    """A loaded sequence-classification reward model (loads on construction so a bad path fails early)."""

    __name__ = "rm_reward"

    def __init__(self, model: str, device: str | None = None, batch_size: int = 16, max_length: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_name = model
        self.batch_size = max(1, int(batch_size))
        self.device = device or os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_folder(model))
            self.model = AutoModelForSequenceClassification.from_pretrained(model_folder(model), dtype="auto")
        except Exception as e:  # OSError / ValueError / hub errors: the user needs the name and the cause
            raise ValueError(f"rm:{model}: could not load a sequence-classification model and tokenizer "
                             f"({type(e).__name__}: {e}). Pass a local model folder.") from None
        self.model.to(self.device).eval()
        pad = self.tokenizer.pad_token_id
        if pad is None:  # batching needs a pad id; the model finds the last real token through it
            self.tokenizer.pad_token = self.tokenizer.eos_token
            pad = self.tokenizer.pad_token_id
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = pad
        self.tokenizer.padding_side = "right"
        limits = [x for x in (max_length, getattr(self.model.config, "max_position_embeddings", None),
                              self.tokenizer.model_max_length) if x and x < 10**9]
        self.max_length = min(limits) if limits else None

    def text(self, prompt: Any, completion: Any) -> str:
        """The exact string the model scores for one row."""
        if self.tokenizer.chat_template:
            return render_chat(self.tokenizer, _messages(prompt, completion))
        return conversation_text(prompt) + completion_text(completion)  # a None prompt: TypeError, bad_completion

    def score_texts(self, texts: Sequence[str]) -> list[float | None]:
        """Scores of already-formatted texts; None where a text exceeds the model's context."""
        import torch

        # chat templates write their own special tokens; plain text gets the tokenizer's usual ones
        special = not self.tokenizer.chat_template
        ids = [self.tokenizer(t, add_special_tokens=special)["input_ids"] for t in texts]
        out: list[float | None] = [None] * len(texts)
        order = sorted((i for i in range(len(ids)) if not self.max_length or len(ids[i]) <= self.max_length),
                       key=lambda i: len(ids[i]))
        with torch.no_grad():
            for b in range(0, len(order), self.batch_size):
                idx = order[b: b + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
                for i, v in zip(idx, logits[:, 0].float().cpu().tolist()):
                    out[i] = v
        return out

    def results(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[RewardResult]:
        texts: list[str | None] = []
        for p, c in zip(prompts, completions):
            try:
                texts.append(self.text(p, c))
            except (TypeError, KeyError):
                texts.append(None)
        good = [i for i, t in enumerate(texts) if t is not None]
        values = self.score_texts([texts[i] for i in good])
        out = [RewardResult(None, "bad_completion")] * len(texts)
        for i, v in zip(good, values):
            out[i] = RewardResult(v, "ok") if v is not None else RewardResult(None, "too_long", {"max_length": self.max_length})
        return out

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        return scores(self.results(prompts, completions, **columns))
