"""`prefsmith label`: score rollouts with reward functions.

    prefsmith label --input rollouts/ --output labeled/ \\
        --reward math --reward format:think --reward my_rewards.py:brevity --weight format=0.2

Every row gains three columns (other columns are kept):
- `rewards`: struct, reward name -> float, or null when the row could not be scored;
- `reward`: the weighted total (weights default to 1; null if any weighted component is null; a weight of 0
  records a reward without counting it);
- `reward_info`: struct, reward name -> reason (`correct`, `wrong`, `bad_gold`, `error: ValueError: ...`).

The name of a reward's field is the part before `:` for built-ins (`math`, `format`, `rm`...) and the function's
name for plug-ins; a repeated name gets `_2`, `_3`... in order. Reward functions are called one batch of
`--batch-size` rows at a time with TRL's signature: `fn(prompts, completions, **columns)`, where `columns` holds
every other column of the input as a list (and `completion_ids`, a list of None when the input has no such
column). An exception in a function nulls that batch's rows for that reward with the message as the reason,
and the stage goes on; `--max-errors N` stops it once more than N rows have errored in this run, keeping the
finished shards, and the same command resumes. The summary (mean per reward, nulls by reason, errors,
rows/s) is printed and written to the manifest under `summary`.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.core import dataset as ds
from pipelines.errors import UserError
from pipelines.core.runner import Shard, run_stage, update_manifest
from rewards.combine import parse_weights, total, unique_names
from rewards.plugins import ERROR_PREFIX, Options, RewardFn, RewardSpecError, build

OUTPUT_COLUMNS = ("rewards", "reward", "reward_info")


@dataclass
class LabelConfig:
    rewards: list[str]  # specs: math, format:think, my_module:fn ...
    weights: list[str] = field(default_factory=list)  # NAME=W
    workers: int | None = None  # worker processes for math / code (their default when None)
    max_errors: int | None = None  # stop once more than this many rows errored in this run
    batch_size: int = 64  # rows per reward-function call
    shard_size: int = 256  # rows per output shard (the unit of resume)
    device: str | None = None  # reward-model device
    allow_unsandboxed_code: bool = False  # run the code reward's untrusted programs with no isolation
    null_on_timeout: bool = False  # math / code: a checker timeout scores None instead of 0 (audits)


@dataclass
class LabelResult:
    output: str
    summary: dict[str, Any]
    skipped: bool = False


def load_rewards(cfg: LabelConfig) -> tuple[list[RewardFn], list[str], dict[str, float]]:
    """Specs -> reward functions, their column names and weights; every mistake is a UserError before work."""
    if not cfg.rewards:
        raise UserError("no reward given; pass --reward NAME[:ARG] at least once (e.g. --reward math)")
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.workers is not None and cfg.workers < 1:
        raise UserError(f"--workers must be >= 1, got {cfg.workers}")
    if cfg.max_errors is not None and cfg.max_errors < 0:
        raise UserError(f"--max-errors must be >= 0, got {cfg.max_errors}")
    options = Options(workers=cfg.workers, device=cfg.device, batch_size=cfg.batch_size,
                      allow_unsandboxed_code=cfg.allow_unsandboxed_code, null_on_timeout=cfg.null_on_timeout)
    fns = []
    for spec in cfg.rewards:
        try:
            fns.append(build(spec, options))
        except RewardSpecError as e:
            raise UserError(f"--reward {spec}: {e}") from None
    names = unique_names([f.name for f in fns])
    try:
        weights = parse_weights(cfg.weights, names)
    except ValueError as e:
        raise UserError(f"--weight: {e}") from None
    return fns, names, {n: weights.get(n, 1.0) for n in names}


def label_rows(rows: list[dict], fns: list[RewardFn], names: list[str], weights: dict[str, float],
               batch_size: int = 64, on_batch=lambda n_rows, n_errors: None) -> list[dict]:
    """Score `rows` (dicts with `prompt` and `completion`) and return them with the three reward columns."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start: start + batch_size]
        keys = dict.fromkeys(k for r in batch for k in r if k not in ("prompt", "completion", *OUTPUT_COLUMNS))
        columns = {k: [r.get(k) for r in batch] for k in keys}
        columns.setdefault("completion_ids", [None] * len(batch))
        prompts = [r["prompt"] for r in batch]
        completions = [r["completion"] for r in batch]
        per_reward = [fn.score(prompts, completions, columns) for fn in fns]
        errors = 0
        for i, row in enumerate(batch):
            scores = {n: res[i].score for n, res in zip(names, per_reward)}
            info = {n: res[i].reason for n, res in zip(names, per_reward)}
            errors += any(r.startswith(ERROR_PREFIX) for r in info.values())
            out.append({**row, "rewards": scores, "reward": total(scores, weights), "reward_info": info})
        on_batch(len(batch), errors)
    return out


def summarize(output: str, names: list[str], weights: dict[str, float]) -> dict[str, Any]:
    """Per-reward mean / nulls by reason / errors over the whole output dataset (resumed shards included)."""
    table = ds.load_table(output)
    rewards = table.column("rewards").to_pylist()
    infos = table.column("reward_info").to_pylist()
    totals = table.column("reward").to_pylist()
    per: dict[str, Any] = {}
    for n in names:
        vals = [r.get(n) for r in rewards]
        got = [v for v in vals if v is not None]
        reasons = [i.get(n) or "" for i in infos]
        per[n] = {
            "weight": weights[n],
            "mean": sum(got) / len(got) if got else None,
            "scored": len(got),
            "null": len(vals) - len(got),
            "null_reasons": dict(Counter(r for v, r in zip(vals, reasons) if v is None).most_common()),
            "errors": sum(r.startswith(ERROR_PREFIX) for r in reasons),
        }
    got = [v for v in totals if v is not None]
    return {
        "rows": table.num_rows,
        "rewards": per,
        "reward": {"mean": sum(got) / len(got) if got else None, "scored": len(got), "null": len(totals) - len(got)},
        "error_rows": sum(any((i.get(n) or "").startswith(ERROR_PREFIX) for n in names) for i in infos),
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_summary(s: dict[str, Any]) -> str:
    width = max([len("reward (total)")] + [len(n) for n in s["rewards"]])
    lines = [f"{'name':<{width}}  {'weight':>6}  {'mean':>8}  {'scored':>7}  {'null':>6}  null reasons"]
    for n, r in s["rewards"].items():
        top = list(r["null_reasons"].items())
        reasons = ", ".join(f"{k[:80]}: {v}" for k, v in top[:3]) + (f" (+{len(top) - 3} more)" if len(top) > 3 else "")
        lines.append(f"{n:<{width}}  {r['weight']:>6g}  {_fmt(r['mean']):>8}  {r['scored']:>7}  {r['null']:>6}  {reasons}")
    t = s["reward"]
    lines.append(f"{'reward (total)':<{width}}  {'':>6}  {_fmt(t['mean']):>8}  {t['scored']:>7}  {t['null']:>6}")
    if s["error_rows"]:
        errs = ", ".join(f"{n}: {r['errors']}" for n, r in s["rewards"].items() if r["errors"])
        lines.append(f"errors: {s['error_rows']} rows had a reward function fail ({errs}); see reward_info")
    rate = s.get("rows_per_s")
    lines.append(f"{s['rows']} rows" + (f"; this run scored {s['rows_this_run']} rows in {s['seconds']:.1f}s "
                                        f"({rate:.1f} rows/s)" if rate is not None else "; nothing to do"))
    return "\n".join(lines)


def label(input: str, output: str, cfg: LabelConfig, *, overwrite: bool = False, progress: bool = True,
          out=None) -> LabelResult:
    """Run the label stage (Python API of `prefsmith label`); returns the summary also written to the manifest."""
    out = out or sys.stdout
    fns, names, weights = load_rewards(cfg)
    required = ["prompt", "completion", *dict.fromkeys(c for f in fns for c in f.required)]
    counts = {"rows": 0, "errors": 0}

    def on_batch(n_rows: int, n_errors: int) -> None:
        counts["rows"] += n_rows
        counts["errors"] += n_errors
        if cfg.max_errors is not None and counts["errors"] > cfg.max_errors:
            raise UserError(f"stopped: {counts['errors']} rows errored in reward functions, more than "
                            f"--max-errors {cfg.max_errors}. Finished shards are kept in {output}; fix the cause "
                            "and rerun the same command to continue (rows already written keep their nulls; "
                            "use --overwrite to score everything again).")

    def process(rows: list[dict], shard: Shard) -> list[dict]:
        def tick(n_rows: int, n_errors: int) -> None:
            shard.tick(n_rows)
            on_batch(n_rows, n_errors)

        return label_rows(rows, fns, names, weights, cfg.batch_size, tick)

    # Only what changes the values goes into the fingerprint, so a resume may change workers or batch size.
    config = {"rewards": list(cfg.rewards), "names": names, "weights": weights,
              **({"null_on_timeout": True} if cfg.null_on_timeout else {})}  # absent when off: old outputs resume
    t0 = time.time()
    try:
        result = run_stage("label", process, config, input, output, required=required, shard_size=cfg.shard_size,
                           overwrite=overwrite, progress=progress)
    finally:
        for f in fns:
            f.close()
    seconds = time.time() - t0
    summary = summarize(output, names, weights)
    if not result.skipped:
        summary.update(rows_this_run=counts["rows"], seconds=round(seconds, 3),
                       rows_per_s=round(counts["rows"] / seconds, 2) if seconds > 0 else None)
        sources = {f.spec: f.fingerprint for f in fns if f.fingerprint}
        update_manifest(output, summary=summary, run={k: v for k, v in asdict(cfg).items() if k != "rewards"},
                        **({"reward_sources": sources} if sources else {}))
    print(format_summary(summary), file=out)
    return LabelResult(str(output), summary, result.skipped)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("rewards: math, math:last_number, math:markers, code, code:fraction, format:think, "
                "format:REGEX (full match, DOTALL), overlong:MAX,CACHE[,TOKENIZER], rm:MODEL, my_module:my_fn, "
                "path/to/file.py:my_fn. "
                "See docs/rewards.md.")
    p.add_argument("--input", required=True, help="rollouts: dataset directory, Parquet or JSONL with prompt, completion")
    p.add_argument("--output", required=True, help="dataset directory to write")
    p.add_argument("--reward", action="append", default=[], metavar="NAME[:ARG]", required=True,
                   help="a reward to apply (repeat for several)")
    p.add_argument("--weight", action="append", default=[], metavar="NAME=W",
                   help="weight of a reward in the total `reward` (default 1; 0 records without counting)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for math/code checks and for your (sync) reward functions")
    p.add_argument("--max-errors", type=int, default=None,
                   help="stop once more than N rows errored in reward functions (default: never stop)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per reward-function call (default 64)")
    p.add_argument("--shard-size", type=int, default=256, help="rows per output shard, the unit of resume")
    p.add_argument("--device", default=None, help="device for rm: rewards (default: cuda if available, else cpu)")
    p.add_argument("--i-know-this-runs-untrusted-code-unsandboxed", dest="allow_unsandboxed_code",
                   action="store_true", help="code reward: run model-written programs with NO isolation")
    p.add_argument("--null-on-timeout", action="store_true",
                   help="math/code: a checker timeout scores null instead of 0 (default 0 with reason timeout)")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg = LabelConfig(rewards=args.reward, weights=args.weight, workers=args.workers, max_errors=args.max_errors,
                      batch_size=args.batch_size, shard_size=args.shard_size, device=args.device,
                      allow_unsandboxed_code=args.allow_unsandboxed_code, null_on_timeout=args.null_on_timeout)
    label(args.input, args.output, cfg, overwrite=args.overwrite, progress=not args.no_progress)
    return 0
