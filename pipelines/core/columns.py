"""`--prompt-column` and `--gold-column`: the one rule every stage that reads prompts (generate, label, eval,
train grpo|rloo|ppo) uses to find them, so a Hugging Face `messages` file flows from `generate` to `label`
without renaming (docs/cli.md, Columns).

- The `prompt` column is a prompt as it is: a string, or a message list (a trailing assistant message is
  continued, not answered).
- Any other column named by `--prompt-column` (e.g. `messages`) holds a conversation: its prompt is the
  messages before the trailing assistant turn(s) (which are the reference answer, not part of the prompt).
- `--gold-column C`: the rewards' gold answers are read from C instead of `answer`.

`standard_rows` gives each row the `prompt` (and `answer`) columns the rewards and builders read; `generate`
writes that `prompt` column into its rollouts, so the next stage needs no flag.
"""
from __future__ import annotations

from typing import Any

from pipelines.errors import UserError
from rewards.chat import is_messages

PROMPT = "prompt"
GOLD = "answer"


def prompt_of(value: Any, column: str) -> Any:
    """The prompt a `column` value stands for (see the module docstring)."""
    if column == PROMPT or not is_messages(value):
        return value
    messages = list(value)
    while messages and messages[-1].get("role") == "assistant":
        messages.pop()
    return messages


def standard_rows(rows: list[dict], prompt_column: str = PROMPT, gold_column: str | None = None,
                  where: str = "the input") -> list[dict]:
    """Rows with `prompt` taken from `prompt_column` and `answer` from `gold_column` (when given and not
    `answer`); every other column as it was. A missing column is a UserError naming it and the columns there."""
    if prompt_column == PROMPT and gold_column in (None, GOLD):
        return rows
    for column in (prompt_column, gold_column):
        if column is not None and rows and column not in rows[0]:
            raise UserError(f"{where}: no column {column!r} (columns: {', '.join(rows[0])})")
    out = []
    for r in rows:
        r = dict(r)
        if prompt_column != PROMPT:
            r[PROMPT] = prompt_of(r[prompt_column], prompt_column)
        if gold_column not in (None, GOLD):
            r[GOLD] = r[gold_column]
        out.append(r)
    return out
