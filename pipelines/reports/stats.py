"""`prefsmith stats DIR`: a summary table (and `--json`) plus a PNG of reward and length histograms.

The dataset kind is detected from its columns: `pairs` (chosen + rejected), `kto` (label + completion),
`sft` (messages, or the `source` column `select` writes), `labeled` (reward), `rollouts` (completion). Reported:
- rows, prompts (distinct `prompt_id`, else distinct prompt text);
- reward: mean, nulls, and the distribution (a value histogram when there are at most 10 distinct values,
  else quantiles);
- pass@k per prompt with the unbiased estimator of Chen et al. 2021, 1 - C(n-c, k) / C(n, k), computed as a
  product (no huge binomials); n = samples with a non-null reward, c = those with reward >= pass_threshold
  (default 1.0); averaged over prompts with n >= k. pass@1 is the mean of c/n;
- all-pass / all-fail / mixed fractions of prompts;
- completion lengths (tokens from `completion_ids` when present, else whitespace words);
- finish reasons; for pairs the chosen/rejected lengths and score margins; for KTO the label balance;
- trajectories (`generate --env`: `turns`, `tool_calls`, `tool_errors` columns): the distribution of each, the
  share of rows with a tool error, the faults by reason, and the mean reward by tool-call count and with /
  without tool errors (`trajectory_stats`); `policy_tokens`: the tokens the policy wrote (`completion_mask`),
  next to `completion_length`, which counts the tool outputs too.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from pipelines.core.dataset import load_table
from pipelines.core.files import atomic_path
from pipelines.errors import UserError
from rewards.chat import conversation_text

QUANTILES = (0, 10, 25, 50, 75, 90, 99, 100)
MAX_DISCRETE = 10


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt: 1 - C(n-c, k)/C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i).

    >>> pass_at_k(4, 1, 2)
    0.5
    """
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def detect_kind(columns: Sequence[str]) -> str:
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "pairs"
    if {"label", "completion"} <= cols:
        return "kto"
    if "messages" in cols or "source" in cols:
        return "sft"
    if "reward" in cols:
        return "labeled"
    if "completion" in cols:
        return "rollouts"
    raise UserError(f"cannot tell what kind of dataset this is from its columns ({', '.join(columns)}); "
                    "expected completion, reward, chosen/rejected, label or messages")


def _words(value: Any) -> int:
    """Whitespace words of a text or message-list field (its whole text, rewards/chat.py)."""
    return len((conversation_text(value) or "").split())


def _assistant_turns(conversations: list) -> list[list[dict]]:
    """Each SFT conversation's assistant messages: the part of it that is trained."""
    return [[m for m in x if m.get("role") == "assistant"] for x in conversations]


def distribution(values: Sequence[float]) -> dict:
    """Mean, count and either a value histogram (few distinct values) or quantiles."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"count": 0}
    out: dict[str, Any] = {"count": int(arr.size), "mean": float(arr.mean())}
    distinct = np.unique(arr)
    if distinct.size <= MAX_DISCRETE:
        out["values"] = {_num(v): int((arr == v).sum()) for v in distinct}
    else:
        out["quantiles"] = {f"p{q}": float(np.percentile(arr, q)) for q in QUANTILES}
    return out


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def lengths(column: list, ids: list | None = None) -> dict:
    """Length percentiles: tokens when ids are given, else whitespace words."""
    values = [len(x) for x in ids if x is not None] if ids is not None else [_words(x) for x in column]
    if not values:
        return {"count": 0}
    arr = np.asarray(values, dtype=float)
    return {"unit": "tokens" if ids is not None else "words", "mean": float(arr.mean()),
            **{f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)}, "max": int(arr.max())}


def prompt_outcomes(prompt_ids: list, rewards: list, ks: Sequence[int], threshold: float) -> dict:
    """pass@k and all-pass/all-fail/mixed fractions from per-prompt samples."""
    by_prompt: dict[Any, list[float]] = defaultdict(list)
    for pid, r in zip(prompt_ids, rewards):
        if r is not None and not (isinstance(r, float) and np.isnan(r)):
            by_prompt[pid].append(r)
    counts = [(len(rs), sum(r >= threshold for r in rs)) for rs in by_prompt.values() if rs]
    if not counts:
        return {"prompts_scored": 0}
    out: dict[str, Any] = {"prompts_scored": len(counts), "pass_threshold": threshold,
                           "samples_per_prompt": distribution([n for n, _ in counts])}
    for k in ks:
        eligible = [pass_at_k(n, c, k) for n, c in counts if n >= k]
        out[f"pass@{k}"] = float(np.mean(eligible)) if eligible else None
        out[f"pass@{k}_prompts"] = len(eligible)
    out["all_pass"] = sum(c == n for n, c in counts) / len(counts)
    out["all_fail"] = sum(c == 0 for n, c in counts) / len(counts)
    out["mixed"] = 1.0 - out["all_pass"] - out["all_fail"]
    return out


TOOL_CALL_BUCKETS = 4  # reward by tool-call count: 0, 1, 2, 3 and "4+"


def _mean_reward(rewards: list) -> dict:
    valid = [r for r in rewards if r is not None and not np.isnan(r)]
    return {"rows": len(rewards), "scored": len(valid), "mean_reward": float(np.mean(valid)) if valid else None}


def trajectory_stats(turns: list, tool_calls: list, tool_errors: list, rewards: list | None = None,
                     faults: list | None = None) -> dict:
    """What a set of trajectories did with its tools, and what that did to the reward: the turns, tool calls and
    tool errors per row (`distribution`), the share of rows with a tool error, the policy faults by reason, and
    (with `rewards`) the mean reward by tool-call count (0, 1, 2, 3, 4+) and with / without tool errors."""
    n = len(turns)
    out: dict[str, Any] = {
        "turns": distribution([t for t in turns if t is not None]),
        "tool_calls": distribution([c for c in tool_calls if c is not None]),
        "tool_errors": distribution([e for e in tool_errors if e is not None]),
        "rows_with_tool_errors": sum(bool(e) for e in tool_errors) / n if n else None,
    }
    if faults is not None and any(faults):
        out["env_faults"] = dict(Counter(str(f) for f in faults if f).most_common())
    if rewards is not None:
        by_calls: dict[str, list] = defaultdict(list)
        for c, r in zip(tool_calls, rewards):
            if c is not None:
                by_calls[str(c) if c < TOOL_CALL_BUCKETS else f"{TOOL_CALL_BUCKETS}+"].append(r)
        out["reward_by_tool_calls"] = {k: _mean_reward(by_calls[k]) for k in sorted(by_calls, key=lambda k: k.rstrip("+").zfill(4))}
        out["reward_by_tool_errors"] = {
            "without": _mean_reward([r for e, r in zip(tool_errors, rewards) if e is not None and not e]),
            "with": _mean_reward([r for e, r in zip(tool_errors, rewards) if e])}
    return out


def compute_stats(table: pa.Table, ks: Sequence[int] = (1, 4, 8), pass_threshold: float = 1.0) -> dict:
    """All statistics of one dataset as a JSON-able dict (see module docstring)."""
    cols = table.column_names
    col = lambda name: table.column(name).to_pylist() if name in cols else None  # noqa: E731
    kind = detect_kind(cols)
    stats: dict[str, Any] = {"kind": kind, "rows": table.num_rows}
    if "prompt_id" in cols:
        stats["prompts"] = len(set(col("prompt_id")))
    elif "prompt" in cols:
        stats["prompts"] = len({json.dumps(p, sort_keys=True, default=str) for p in col("prompt")})
    if kind == "pairs":
        chosen, rejected = col("chosen"), col("rejected")
        stats["chosen_length"] = lengths(chosen)
        stats["rejected_length"] = lengths(rejected)
        if {"score_chosen", "score_rejected"} <= set(cols):
            margins = [c - r for c, r in zip(col("score_chosen"), col("score_rejected")) if c is not None and r is not None]
            stats["margin"] = distribution(margins)
        if "prompts" in stats:
            stats["pairs_per_prompt"] = table.num_rows / stats["prompts"]
        return stats
    if kind == "kto":
        labels = col("label")
        n_true = sum(bool(x) for x in labels)
        stats["labels"] = {"desirable": n_true, "undesirable": len(labels) - n_true,
                           "desirable_fraction": n_true / len(labels) if labels else None}
    if "reward" in cols:
        rewards = col("reward")
        valid = [r for r in rewards if r is not None and not np.isnan(r)]
        stats["reward"] = {**distribution(valid), "null": len(rewards) - len(valid)}
        if "prompt_id" in cols and kind in ("labeled", "rollouts"):
            stats["outcomes"] = prompt_outcomes(col("prompt_id"), rewards, ks, pass_threshold)
    if "completion_ids" in cols:
        stats["completion_length"] = lengths(col("completion"), col("completion_ids"))
    elif "completion" in cols:
        stats["completion_length"] = lengths(col("completion"))
    elif "messages" in cols:
        stats["completion_length"] = lengths(_assistant_turns(col("messages")))
    if "completion_mask" in cols:
        stats["policy_tokens"] = distribution([sum(m) for m in col("completion_mask") if m is not None])
    if {"turns", "tool_calls", "tool_errors"} <= set(cols):
        stats["trajectories"] = trajectory_stats(col("turns"), col("tool_calls"), col("tool_errors"), col("reward"),
                                                 col("env_fault"))
    if "finish_reason" in cols:
        stats["finish_reasons"] = dict(Counter(str(x) for x in col("finish_reason")).most_common())
    if "source" in cols:
        stats["sources"] = dict(Counter(str(x) for x in col("source")).most_common())
    return stats


def format_table(stats: dict, source: str) -> str:
    """Human-readable table: one `name  value` line per number, sections indented."""
    lines = [f"{source}  ({stats['kind']})"]

    def emit(key: str, value: Any, indent: int) -> None:
        pad = "  " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            for k, v in value.items():
                emit(k, v, indent + 1)
        elif isinstance(value, float):
            lines.append(f"{pad}{key:<{28 - len(pad)}} {value:.4f}")
        else:
            lines.append(f"{pad}{key:<{28 - len(pad)}} {value}")

    for k, v in stats.items():
        if k != "kind":
            emit(k, v, 1)
    return "\n".join(lines)


def plot(table: pa.Table, stats: dict, path: str | Path) -> Path:
    """Two panels: the score histogram (reward, pair margin or KTO labels) and the length histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = table.column_names
    col = lambda name: table.column(name).to_pylist()  # noqa: E731
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    kind = stats["kind"]
    if kind == "pairs" and "score_chosen" in cols:
        left.hist([c - r for c, r in zip(col("score_chosen"), col("score_rejected")) if c is not None and r is not None],
                  bins=30)
        left.set_title("score margin (chosen - rejected)")
    elif kind == "kto":
        left.bar(["desirable", "undesirable"], [stats["labels"]["desirable"], stats["labels"]["undesirable"]])
        left.set_title("KTO labels")
    elif "reward" in cols:
        left.hist([r for r in col("reward") if r is not None and not np.isnan(r)], bins=30)
        left.set_title(f"reward (null: {stats['reward']['null']})")
    else:
        left.set_axis_off()
    if kind == "pairs":
        for name in ("chosen", "rejected"):
            right.hist([_words(x) for x in col(name)], bins=30, alpha=0.6, label=name)
        right.legend()
        right.set_title("length (words)")
    elif "completion_ids" in cols:
        right.hist([len(x) for x in col("completion_ids") if x is not None], bins=30)
        right.set_title("completion length (tokens)")
    elif "completion" in cols or "messages" in cols:
        values = col("completion") if "completion" in cols else _assistant_turns(col("messages"))
        right.hist([_words(x) for x in values], bins=30)
        right.set_title("completion length (words)")
    else:
        right.set_axis_off()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def parse_ks(value: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in value.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--k {value!r}: expected comma-separated integers, e.g. 1,4,8") from None
    if not ks or ks[0] < 1:
        raise UserError(f"--k {value!r}: every k must be >= 1")
    return ks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="dataset directory, JSONL or Parquet file (rollouts, labeled, pairs, KTO, SFT)")
    p.add_argument("--k", default="1,4,8", help="k values for pass@k (default 1,4,8)")
    p.add_argument("--pass-threshold", type=float, default=1.0, help="a sample passes when reward >= this")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON instead of a table")
    p.add_argument("--plot", default=None, help="PNG path (default DIR/stats.png, or FILE.stats.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")


def run(args: argparse.Namespace) -> int:
    table = load_table(args.input)
    stats = compute_stats(table, parse_ks(args.k), args.pass_threshold)
    if not args.no_plot:
        src = Path(args.input)
        default = (src / "stats.png" if src.is_dir() else src.with_name(src.name + ".stats.png") if src.exists()
                   else Path("stats.png"))  # a hub dataset: the current directory
        stats["plot"] = str(plot(table, stats, args.plot or default))
    print(json.dumps(stats, indent=2) if args.json else format_table(stats, args.input))
    return 0
