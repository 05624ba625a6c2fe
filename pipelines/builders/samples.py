"""What the training-set builders (`pairs`, `kto`, `select`) share: reading one prompt's scored samples.

- `score_rows` splits a prompt's rows into valid ones (a finite reward) and skipped ones (null/NaN reward,
  with the reason taken from `reward_info`).
- `normalize_text` is the whitespace normalization used to decide that two completions are "the same".
- `context` is the prompt a set trains in: the one the engine sampled from (`sampled_prompt`), so a trainer
  renders exactly the tokens the policy continued (docs/builders.md, "Context").
- `as_completion` gives the completion side in the format TRL expects for the prompt's format; `sampled_side`
  gives a trajectory's (docs/builders.md, "Trajectories").
- `carried` / `prompt_columns` keep a row's / a prompt's extra columns (`answer`, `tests`, `policy`...) and
  drop the standard per-sample ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import dataset as ds
from pipelines.core.stage import Stage
from rewards.chat import as_messages, completion_text, conversation_text, is_messages


# Builders do little work per row, so shards are larger than the runner's default: the cost of a shard is
# then its atomic writes (fsync) and manifest update, not the rows.
SHARD_SIZE = 4096

class BuilderStage(Stage):
    """What the builders' stages share: a config dataclass (its fields are the fingerprint) and large shards."""

    shard_size = SHARD_SIZE

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def config(self) -> dict:
        from dataclasses import asdict

        return asdict(self.cfg)

    def required(self) -> list[str]:
        return ["prompt", "completion"]


class PromptGroupStage(BuilderStage):
    """A builder that reads each prompt's scored samples together (pairs, select)."""

    group_by = "prompt_id"

    def required(self) -> list[str]:
        return ["prompt_id", "prompt", "completion"]

    def present(self) -> list[str]:
        return ["reward"]


# Columns that describe one sample, not the prompt: never carried into a built training set.
SAMPLE_COLUMNS = frozenset({
    "id", "sample_idx", "prompt", "completion", "completion_ids", "logprobs", "finish_reason",
    "reward", "rewards", "reward_info", "prompt_id", "label", "messages", "sampled_prompt", "completion_mask",
    "policy_logprobs",
})


def input_schema(source: str) -> pa.Schema:
    """Schema of an input, reading only the Parquet footers when the input is Parquet."""
    return ds.open_input(source).schema()


def chat_column(schema: pa.Schema, column: str) -> bool:
    """Whether a column holds message lists (a list type) rather than strings."""
    return column in schema.names and pa.types.is_list(schema.field(column).type)


def normalize_text(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends: 'a  b\\n' and 'a b' are the same text."""
    return " ".join(text.split())


def context(row: dict) -> str | list[dict]:
    """The prompt a training row is built on: `sampled_prompt`, what the engine continued (template, system
    message and chat applied), when `generate` wrote it; else `prompt` (rollouts from elsewhere, or from before
    the column existed)."""
    sampled = row.get("sampled_prompt")
    return sampled if sampled is not None else row["prompt"]


def as_completion(prompt: Any, text: str) -> str | list[dict]:
    """TRL's formats: a conversational prompt gets a one-message assistant list, a text prompt a string."""
    return as_messages(text, "assistant") if is_messages(prompt) else text


def is_trajectory(row: dict) -> bool:
    """A multi-turn rollout (`generate --env`): its conversation and a mask of which tokens are the policy's."""
    return row.get("completion_mask") is not None and row.get("messages") is not None


def trajectory_messages(row: dict) -> list[dict]:
    """A trajectory's messages after its sampled prompt: each assistant turn and each observation, in order."""
    prompt = context(row)
    return [dict(m) for m in row["messages"][len(prompt) if isinstance(prompt, list) else 1:]]


def sampled_side(row: dict, name: str = "completion") -> dict:
    """A sample's completion side as a built set writes it, under `name` (`completion`, `chosen`, `rejected`).
    A single-turn sample: its text, in the prompt's format (`as_completion`). A trajectory: its messages after
    the prompt (assistant turns and tool outputs, TRL's conversational format) plus its ids as sampled and their
    mask, `NAME_ids` / `NAME_mask` (`completion_ids` / `completion_mask` for `completion`), so a trainer trains
    the policy's tokens only, never re-tokenized (trainers/core/data.py `encode_sampled`)."""
    if not is_trajectory(row):
        return {name: as_completion(context(row), row["completion"])}
    ids, mask = ("completion_ids", "completion_mask") if name == "completion" else (f"{name}_ids", f"{name}_mask")
    return {name: trajectory_messages(row), ids: list(row["completion_ids"]), mask: list(row["completion_mask"])}


def carried(row: dict) -> dict:
    """The row's own columns other than the standard per-sample ones (gold answer, tests, policy, a judge's
    verdict...): for outputs where one row is one sample (KTO, select)."""
    return {k: v for k, v in row.items() if k not in SAMPLE_COLUMNS}


def prompt_columns(group: list[dict]) -> dict:
    """Columns shared by a prompt's samples (gold answer, tests, policy...), for outputs that combine two
    samples (pairs). A column whose value differs between the samples is not the prompt's: it is null."""
    first = carried(group[0])
    return {k: v if all(r.get(k) == v for r in group[1:]) else None for k, v in first.items()}


def null_reason(row: dict) -> str:
    """Why a row has no usable reward, from `reward_info` of the components whose score is null."""
    info = row.get("reward_info") or {}
    rewards = row.get("rewards") or {}
    if row.get("reward") is not None and isinstance(row["reward"], float) and math.isnan(row["reward"]):
        return "reward is NaN"
    parts = [f"{name}: {info.get(name) or 'null'}" for name, value in rewards.items() if value is None]
    if not parts:  # no per-component detail: report whatever the labeler wrote
        parts = [f"{name}: {reason}" for name, reason in info.items() if reason]
    return "; ".join(parts) or "null reward (no reward_info)"


@dataclass
class Sample:
    """One scored sample of a prompt; `order` breaks ties (sample_idx, else position in the input)."""
    row: dict
    reward: float
    order: int
    text: str  # the completion's text (rewards/chat.py; a trajectory's: every turn and output), whitespace-normalized

    @property
    def id(self) -> str:
        return str(self.row["id"])


def row_id(row: dict, order: int) -> str:
    if row.get("id") is not None:
        return str(row["id"])
    return f"{row.get('prompt_id')}-{order}"


def score_rows(rows: list[dict], score: str = "reward") -> tuple[list[Sample], list[dict]]:
    """Split one prompt's rows into valid samples and skipped rows `{id, prompt_id, reason}`."""
    valid: list[Sample] = []
    skipped: list[dict] = []
    for pos, row in enumerate(rows):
        order = row["sample_idx"] if row.get("sample_idx") is not None else pos
        value = row.get(score)
        if isinstance(value, bool):
            value = float(value)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            reason = null_reason(row) if score == "reward" else f"{score} is null"
            skipped.append({"id": row_id(row, order), "prompt_id": row.get("prompt_id"), "reason": reason})
            continue
        row = row if row.get("id") is not None else {**row, "id": row_id(row, order)}
        # a trajectory's text is all of it: two that end in the same answer by other tool calls are not the same
        text = normalize_text(conversation_text(trajectory_messages(row)) if is_trajectory(row)
                              else completion_text(row["completion"]))
        valid.append(Sample(row=row, reward=float(value), order=int(order), text=text))
    return valid, skipped


def group_rows(rows: list[dict], key: str = "prompt_id") -> list[list[dict]]:
    """Consecutive runs of rows with the same `key` (the runner keeps each prompt's rows in one shard)."""
    groups: list[list[dict]] = []
    for row in rows:
        if groups and groups[-1][0].get(key) == row.get(key):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def read_side(directory: str | Path, name: str) -> list[dict]:
    """Rows of a side dataset (`DIR/NAME/data/*.parquet`), [] when the stage wrote none."""
    files = ds.shard_files(Path(directory) / name) if (Path(directory) / name).is_dir() else []
    return ds.concat([pq.read_table(f) for f in files]).to_pylist() if files else []


def count_by(rows: list[dict], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row[key]] = out.get(row[key], 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))
