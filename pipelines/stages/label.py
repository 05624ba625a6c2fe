"""`prefsmith label`: score rollouts with reward functions.

    prefsmith label --input rollouts/ --output labeled/ \\
        --reward math --reward format:think --reward my_rewards.py:brevity --weight format=0.2

Every row gains three columns (other columns are kept):
- `rewards`: struct, reward name -> float, or null when the row could not be scored;
- `reward`: the weighted total (weights default to 1; null if any weighted component is null; a weight of 0
  records a reward without counting it);
- `reward_info`: struct, reward name -> reason (`correct`, `wrong`, `bad_gold`, `error: ValueError: ...`).

A null gold (`answer`, `tests`) is that row's null with reason `bad_gold` (or `bad_tests`), not a refused file;
a rollout whose prompt did not fit the model's context (`finish_reason` `too_long`, never sampled) is null with
reason `too_long` for every reward, without calling them.

Trajectories (`generate --env`, pipelines/envs/base.py) are scored on their final assistant turn (`completion`),
and their `finish_reason` composes with every reward (`trajectory_outcome`, docs/rewards.md "What null means"):
`env_error` (the environment failed) is null for every reward with the environment's reason, without calling
them; `fault` and `max_turns` (the policy ended without an answer) cap every reward at 0: a score above or at 0
becomes 0 with the row's `env_fault` as reason, a penalty (a score below 0) and a null are kept.

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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipelines.core import dataset as ds
from pipelines.core.columns import standard_rows
from pipelines.core.options import add_dataclass_options, from_args
from pipelines.envs.base import ENV_ERROR, POLICY_FAULTS
from pipelines.errors import UserError
from pipelines.core.runner import Shard, execute, update_manifest
from pipelines.core.stage import Stage
from pipelines.core.threads import add_threads_argument, apply_threads
from pipelines.engines.base import TOO_LONG
from pipelines.executors import add_executor_arguments, executor_config
from rewards.combine import parse_weights, total, unique_names
from rewards.plugins import ERROR_PREFIX, Options, RewardFn, RewardSpecError, build

OUTPUT_COLUMNS = ("rewards", "reward", "reward_info")


@dataclass
class LabelConfig:
    """The options of `prefsmith label` (its flags come from these fields: `add_arguments`)."""

    rewards: list[str] = field(metadata={"flag": "--reward", "metavar": "NAME[:ARG]",
                                         "help": "a reward to apply (repeat for several)"})
    weights: list[str] = field(default_factory=list, metadata={
        "flag": "--weight", "metavar": "NAME=W",
        "help": "weight of a reward in the total `reward` (default 1; 0 records without counting)"})
    workers: int | None = None  # worker processes for math/code checks and for your (sync) reward functions
    max_errors: int | None = None  # stop once more than N rows errored in reward functions (default: never stop)
    batch_size: int = 64  # rows per reward-function call
    shard_size: int | None = None  # rows per output shard, the unit of resume (None: LabelStage.shard_size)
    device: str | None = None  # device for rm: rewards (default: cuda if available, else cpu)
    allow_unsandboxed_code: bool = False  # run the code reward's untrusted programs with no isolation
    null_on_timeout: bool = False  # math/code: a checker timeout scores null instead of 0 (default 0, reason timeout)
    threads: int | None = None  # torch CPU threads for rm: / prm: / plug-in models, None auto (docs/engines.md)
    prompt_column: str = "prompt"  # where the prompts are: a string or messages (pipelines/core/columns.py)
    gold_column: str = "answer"  # where the rewards read gold answers


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
            fns.append(_judge_reward(spec) if spec.startswith("judge:") else build(spec, options))
        except RewardSpecError as e:
            raise UserError(f"--reward {spec}: {e}") from None
    if "torch" in sys.modules:  # a reward that runs a torch model here (rm:, prm:, a plug-in's) loaded it
        apply_threads(cfg.threads)
    return (fns, *_names_weights(cfg, fns))


def _judge_reward(spec: str) -> RewardFn:
    """`judge:RUBRIC@URL#MODEL`: an LLM judge as a reward. Built here, not in rewards.plugins.BUILTINS,
    because rewards/ (the leaf) may not import judges/ or the OpenAI client (pipelines/stages/judge.py)."""
    from pipelines.stages.judge import judge_reward

    return judge_reward(spec)




def unscorable(row: dict) -> str | None:
    """The reason every reward of `row` is null without being called, or None: a prompt that never fit the
    model's context (`too_long`), an environment that failed (`env_error: ...`, the environment's message)."""
    reason = row.get("finish_reason")
    if reason == TOO_LONG:
        return TOO_LONG
    if reason == ENV_ERROR:
        fault = row.get("env_fault")
        return fault if fault and fault.startswith(ENV_ERROR) else f"{ENV_ERROR}: {fault}" if fault else ENV_ERROR
    return None


def trajectory_outcome(row: dict, scores: dict, info: dict) -> tuple[dict, dict]:
    """A trajectory the policy ended without an answer (`fault`: a malformed tool call, an unknown tool...;
    `max_turns`: still calling tools at --max-turns) is never paid: each score at or above 0 becomes 0 with the
    row's `env_fault` as reason. A penalty (below 0) keeps its score and reason, so faulting never escapes it, and
    a null stays null (a bad gold is still the data's failure). Other rows pass unchanged."""
    if row.get("finish_reason") not in POLICY_FAULTS:
        return scores, info
    why = row.get("env_fault") or row["finish_reason"]
    capped = {n: s if s is None or s < 0 else 0.0 for n, s in scores.items()}
    return capped, {n: why if s is not None and s >= 0 else info[n] for n, s in scores.items()}


def label_rows(rows: list[dict], fns: list[RewardFn], names: list[str], weights: dict[str, float],
               batch_size: int = 64, on_batch=lambda n_rows, n_errors: None) -> list[dict]:
    """Score `rows` (dicts with `prompt` and `completion`) and return them with the three reward columns."""
    out = []
    for start in range(0, len(rows), batch_size):
        whole = rows[start: start + batch_size]
        # never sampled (too_long) or the environment failed (env_error): null for every reward, not called
        batch = [r for r in whole if unscorable(r) is None]
        keys = dict.fromkeys(k for r in batch for k in r if k not in ("prompt", "completion", *OUTPUT_COLUMNS))
        columns = {k: [r.get(k) for r in batch] for k in keys}
        columns.setdefault("completion_ids", [None] * len(batch))
        prompts = [r["prompt"] for r in batch]
        completions = [r["completion"] for r in batch]
        per_reward = [fn.score(prompts, completions, columns) for fn in fns] if batch else []
        errors, i = 0, 0
        for row in whole:
            why = unscorable(row)
            if why is not None:
                scores, info = dict.fromkeys(names), dict.fromkeys(names, why)
            else:
                scores, info = trajectory_outcome(row, {n: res[i].score for n, res in zip(names, per_reward)},
                                                  {n: res[i].reason for n, res in zip(names, per_reward)})
                i += 1
            errors += any(r.startswith(ERROR_PREFIX) for r in info.values())
            out.append({**row, "rewards": scores, "reward": total(scores, weights), "reward_info": info})
        on_batch(len(whole), errors)
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


class LabelStage(Stage):
    """`label` as a stage. The reward functions are built where the stage runs (a Ray replica builds its own
    math workers and code sandboxes, sized to the CPUs it reserved); the driver builds them once first to check
    every spec and to learn the names, weights and required columns before any work."""

    name = "label"
    shard_size = 256
    _runtime = ("fns", "counts")

    def __init__(self, cfg: LabelConfig, fns: list[RewardFn] | None = None):
        self.cfg = cfg
        checked, self.names, self.weights = load_rewards(cfg) if fns is None else (fns, *_names_weights(cfg, fns))
        self.needs = list(dict.fromkeys(c for f in checked if not f.nullable for c in f.required))
        # a built-in's gold column must exist but may hold nulls: such a row is that reward's `bad_gold` null
        self.golds = [c for c in dict.fromkeys(c for f in checked if f.nullable for c in f.required)
                      if c not in self.needs]
        self.sources = {f.spec: f.fingerprint for f in checked if f.fingerprint}
        self.fns = checked  # used as they are when the stage runs in this process
        self.counts = {"rows": 0, "errors": 0}
        self.cpus: int | None = None  # set by an executor replica: the CPUs it reserved

    def config(self) -> dict:
        # Only what changes the values goes into the fingerprint, so a resume may change workers or batch size.
        columns = {k: getattr(self.cfg, k) for k, default in (("prompt_column", "prompt"), ("gold_column", "answer"))
                   if getattr(self.cfg, k) != default}
        return {"rewards": list(self.cfg.rewards), "names": self.names, "weights": self.weights,
                **({"null_on_timeout": True} if self.cfg.null_on_timeout else {}),  # absent when off: old outputs resume
                **columns}

    def _column(self, name: str) -> str:
        """The input's column for a reward's `prompt` / `answer` (--prompt-column, --gold-column)."""
        return {"prompt": self.cfg.prompt_column, "answer": self.cfg.gold_column}.get(name, name)

    def required(self) -> list[str]:
        return [self.cfg.prompt_column, "completion", *map(self._column, self.needs)]

    def present(self) -> list[str]:
        return list(map(self._column, self.golds))

    def setup(self) -> None:
        if self.fns is None:
            cfg = self.cfg if self.cfg.workers or not self.cpus else replace(self.cfg, workers=self.cpus)
            self.fns, _, _ = load_rewards(cfg)
        if self.counts is None:
            self.counts = {"rows": 0, "errors": 0}

    def process(self, rows: list[dict], shard: Shard) -> dict:
        errors = [0]

        def tick(n_rows: int, n_errors: int) -> None:
            shard.tick(n_rows)
            errors[0] += n_errors
            self.counts["errors"] += n_errors
            self._stop_if_over(self.counts["errors"])

        view = standard_rows(rows, self.cfg.prompt_column, self.cfg.gold_column)
        out = label_rows(view, self.fns, self.names, self.weights, self.cfg.batch_size, tick)
        if view is not rows:  # the rows as they came, plus the reward columns
            out = [{**r, **{k: o[k] for k in ("rewards", "reward", "reward_info")}} for r, o in zip(rows, out)]
        return {"rows": out, "stats": {"rows": len(rows), "error_rows": errors[0]}}

    def check(self, stats: dict) -> None:  # the driver's count over every replica's shards of this run
        self._stop_if_over(int(stats.get("error_rows", 0)))

    def _stop_if_over(self, errors: int) -> None:
        limit = self.cfg.max_errors
        if limit is not None and errors > limit:
            raise UserError(f"stopped: {errors} rows errored in reward functions, "
                            f"more than --max-errors {limit}. Finished shards are kept; fix the cause "
                            "and rerun the same command to continue (rows already written keep their nulls; "
                            "use --overwrite to score everything again).")

    def close(self) -> None:
        for f in self.fns or []:
            f.close()
        self.fns = None


def _names_weights(cfg: LabelConfig, fns: list[RewardFn]) -> tuple[list[str], dict[str, float]]:
    names = unique_names([f.name for f in fns])
    try:
        weights = parse_weights(cfg.weights, names)
    except ValueError as e:
        raise UserError(f"--weight: {e}") from None
    return names, {n: weights.get(n, 1.0) for n in names}


def label(input: str, output: str, cfg: LabelConfig, *, overwrite: bool = False, progress: bool = True,
          out=None, executor=None) -> LabelResult:
    """Run the label stage (Python API of `prefsmith label`); returns the summary also written to the manifest."""
    out = out or sys.stdout
    stage = LabelStage(cfg)
    t0 = time.time()
    try:
        result = execute(stage, input, output, shard_size=cfg.shard_size, overwrite=overwrite, progress=progress,
                     executor=executor)
    finally:
        stage.close()  # the reward functions the driver built (a replica closes its own)
    seconds = time.time() - t0
    summary = summarize(output, stage.names, stage.weights)
    if not result.skipped:
        rows = int(result.extra["run_stats"].get("rows", 0))
        summary.update(rows_this_run=rows, seconds=round(seconds, 3),
                       rows_per_s=round(rows / seconds, 2) if seconds > 0 else None)
        update_manifest(output, summary=summary, run={k: v for k, v in asdict(cfg).items() if k != "rewards"},
                        **({"reward_sources": stage.sources} if stage.sources else {}))
    print(format_summary(summary), file=out)
    return LabelResult(str(output), summary, result.skipped)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("rewards: math, math:last_number, math:markers, code, code:fraction, format:think, format:boxed, "
                "format:REGEX (full match, DOTALL), overlong:MAX,CACHE[,TOKENIZER], rm:MODEL, prm:DIR[:min|prod|last|mean], "
                "turn_reward, tool_use (trajectories of generate --env), "
                "judge:RUBRIC@URL#MODEL (an LLM judge's score, docs/judges.md), my_module:my_fn, "
                "path/to/file.py:my_fn. "
                "See docs/rewards.md.")
    p.add_argument("--input", required=True, help="rollouts: dataset directory, Parquet or JSONL with prompt, completion")
    p.add_argument("--output", required=True, help="dataset directory to write")
    p.add_argument("--shard-size", type=int, default=None, help=f"rows per output shard, the unit of resume (default {LabelStage.shard_size})")
    add_threads_argument(p)
    p.add_argument("--i-know-this-runs-untrusted-code-unsandboxed", dest="allow_unsandboxed_code",
                   action="store_true", help="code reward: run model-written programs with NO isolation")
    add_dataclass_options(p, LabelConfig)  # every other LabelConfig field: --reward, --weight, --workers, ...
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_arguments(p)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(LabelConfig, args)
    label(args.input, args.output, cfg, overwrite=args.overwrite, progress=not args.no_progress,
          executor=executor_config(args))
    return 0
