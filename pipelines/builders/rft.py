"""`prefsmith select`: rejection-sampling (RFT) SFT sets from scored rollouts, optionally mixed with other SFT data.

Rules (see docs/builders.md):
- a completion is correct when its reward is not null and `reward >= min_reward` (default 1.0);
- `best`: one row per prompt: the highest reward, then the shortest completion (characters after
  whitespace normalization: the least verbose correct answer), then the earliest `sample_idx`;
- `all-correct`: every correct completion, duplicates within a prompt (same text after whitespace
  normalization) kept once (the highest reward, then the earliest sample), in `sample_idx` order;
- `--by SPEC` (best-of-N): rank each prompt's completions by a reward spec instead, typically a process
  reward model (`--by prm:DIR[:min|prod|last|mean]`), and keep the top-scored one (ties: earliest sample)
  whatever its `reward`, which is carried (so the set's accuracy is the best-of-N accuracy) and not needed;
  the ranking score is the `by_score` column, its reason `by_info`;
- `--mix OTHER:RATIO`: RATIO is the fraction of the final set drawn from OTHER. With S selected rows,
  `round(S * RATIO / (1 - RATIO))` rows of OTHER are drawn uniformly without replacement (seeded by
  `--seed`) and appended as the last shard; too few rows in OTHER is an error naming the largest possible
  ratio. Rows are not shuffled (trainers shuffle).

Output: `prompt`, `completion`, `id`, `prompt_id`, `reward`, `source` ("rft" for selected rows, "mix:OTHER"
for mixed ones) and the prompt-level columns; `prompt` is the context the sample was drawn in (the rollout's
`sampled_prompt`). A conversational prompt gets a one-message assistant list as
`completion` (TRL's conversational prompt-completion format). When mixing with an SFT set that uses
`messages`, or when one side is conversational and the other plain text, every row is written as
`messages` instead (a text prompt becomes one user message, the completion one assistant message).
A trajectory (`generate --env`) is selected like any sample; its `completion` is its messages after the prompt
(assistant turns and tool outputs) and it carries `completion_ids` / `completion_mask`, so `train sft` trains the
policy's tokens only (`samples.sampled_side`); in the `messages` format it is the whole conversation, trained on
its assistant turns as rendered.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa

from pipelines.core import dataset as ds
from pipelines.core.options import add_dataclass_options, from_args
from pipelines.errors import UserError
from pipelines.builders.samples import (PromptGroupStage, Sample, as_completion, carried, chat_column, context, count_by,
                                        group_rows, input_schema, read_side, sampled_side, score_rows)
from pipelines.core.runner import MARKERS, Shard, StageResult, execute, update_manifest, written
from pipelines.executors import add_executor_arguments, executor_config
from rewards.chat import as_messages, is_messages

KEEP = ("best", "all-correct")


@dataclass
class SelectConfig:
    """The options of `prefsmith select` (its flags come from these fields: `add_arguments`; `--mix OTHER:RATIO`
    gives `mix` and `mix_ratio`)."""

    keep: str = field(default="best", metadata={"choices": KEEP, "help": (
        "best: one per prompt (highest reward, then shortest); all-correct: every distinct correct one")})
    min_reward: float = 1.0  # correct means reward >= this
    mix: str | None = None  # path or name of another SFT dataset
    mix_ratio: float = 0.0  # fraction of the final set drawn from `mix`
    seed: int = 0  # seed of the mix sampling
    by: str | None = field(default=None, metadata={"metavar": "SPEC", "help": (
        "best-of-N: keep each prompt's completion a reward spec scores highest, e.g. prm:runs/prm:min")})
    # filled by build_select (part of the fingerprint): output format and the mix input's content hash
    format: str = "prompt-completion"
    mix_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.keep not in KEEP:
            raise UserError(f"--keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.mix is not None and not 0.0 <= self.mix_ratio < 1.0:
            raise UserError(f"--mix ratio must be in [0, 1) (the fraction of the final set drawn from it), got {self.mix_ratio}")
        if self.by is not None and self.keep != "best":
            raise UserError("--by picks one completion per prompt (best-of-N): use it with --keep best")


def parse_mix(value: str) -> tuple[str, float]:
    """'path/to/sft.jsonl:0.3' -> ('path/to/sft.jsonl', 0.3); the ratio follows the last colon."""
    path, sep, ratio = value.rpartition(":")
    try:
        if not sep or not path:
            raise ValueError
        return path, float(ratio)
    except ValueError:
        raise UserError(f"--mix {value!r}: expected OTHER_SFT:RATIO, e.g. data/sft.jsonl:0.3") from None


def choose(valid: list[Sample], keep: str, min_reward: float) -> tuple[list[Sample], int, int]:
    """(selected samples, correct count, distinct correct count) for one prompt."""
    correct = [s for s in valid if s.reward >= min_reward]
    ranked = sorted(correct, key=lambda s: (-s.reward, s.order))
    distinct: dict[str, Sample] = {}
    for s in ranked:
        distinct.setdefault(s.text, s)
    if not distinct:
        return [], len(correct), 0
    if keep == "best":
        picked = [min(distinct.values(), key=lambda s: (-s.reward, len(s.text), s.order))]
    else:
        picked = sorted(distinct.values(), key=lambda s: s.order)
    return picked, len(correct), len(distinct)


def to_messages(prompt, completion) -> list[dict]:
    return as_messages(prompt, "user") + as_messages(completion, "assistant")


def selected_row(s: Sample, fmt: str) -> dict:
    row = s.row
    prompt = context(row)
    side = sampled_side(row)
    body = ({"messages": to_messages(prompt, side["completion"])} if fmt == "messages" else {"prompt": prompt, **side})
    return {**body, "id": s.id, "prompt_id": row["prompt_id"], "reward": s.reward, "source": "rft", **carried(row)}


def by_scores(rows: list[dict], fn) -> list[dict]:
    """Rows with `by_score` / `by_info`: `fn` (a rewards.plugins.RewardFn) on each row's completion."""
    columns = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)
               if k not in ("prompt", "completion")}
    results = fn.score([r["prompt"] for r in rows], [r["completion"] for r in rows], columns)
    return [{**r, "by_score": res.score, "by_info": res.reason} for r, res in zip(rows, results)]


def select_rows(rows: list[dict], cfg: SelectConfig, tick=lambda n: None, by=None) -> dict[str, list[dict]]:
    """The row-level core of `select`: scored rollouts (each prompt's rows together) -> the SFT rows kept,
    plus the per-prompt record (`prompts`) and the null rows left out (`skipped`). `by`: the RewardFn of
    `cfg.by`, whose score ranks the rows instead of `reward`."""
    out, prompts, skipped = [], [], []
    for group in group_rows(rows):
        if by is not None:
            group = by_scores(group, by)
            valid, _ = score_rows(group, "by_score")
            nulls = [{"id": str(r.get("id")), "prompt_id": r.get("prompt_id"), "reason": f"by: {r['by_info']}"}
                     for r in group if r["by_score"] is None]
            picked = [min(valid, key=lambda s: (-s.reward, s.order))] if valid else []  # ties: earliest sample
            out += [{**selected_row(s, cfg.format), "reward": s.row.get("reward"), "by_score": s.reward,
                     "by_info": s.row["by_info"]} for s in picked]
            skipped += nulls
            correct = [r.get("reward") is not None and r["reward"] >= cfg.min_reward for r in group]
            prompts.append({"prompt_id": group[0]["prompt_id"], "rows": len(group), "null": len(nulls),
                            "correct": sum(correct), "distinct_correct": sum(correct), "selected": len(picked),
                            "selected_correct": sum(s.row.get("reward") is not None
                                                    and s.row["reward"] >= cfg.min_reward for s in picked)})
            tick(len(group))
            continue
        valid, nulls = score_rows(group)
        picked, n_correct, n_distinct = choose(valid, cfg.keep, cfg.min_reward)
        out += [selected_row(s, cfg.format) for s in picked]
        skipped += nulls
        prompts.append({"prompt_id": group[0]["prompt_id"], "rows": len(group), "null": len(nulls),
                        "correct": n_correct, "distinct_correct": n_distinct, "selected": len(picked)})
        tick(len(group))
    return {"rows": out, "prompts": prompts, "skipped": skipped}


class SelectStage(PromptGroupStage):
    name = "select"
    _runtime = ("by_fn",)

    def __init__(self, cfg: SelectConfig):
        super().__init__(cfg)
        self.by_fn = _build_by(cfg.by) if cfg.by else None  # a bad spec fails before any work

    def config(self) -> dict:
        config = super().config()
        if config["by"] is None:  # absent when off: outputs made before --by existed still resume
            del config["by"]
        return config

    def present(self) -> list[str]:
        return [] if self.cfg.by else ["reward"]  # best-of-N needs no labels

    def setup(self) -> None:
        if self.cfg.by and self.by_fn is None:
            self.by_fn = _build_by(self.cfg.by)

    def process(self, rows: list[dict], shard: Shard) -> dict:
        return select_rows(rows, self.cfg, shard.tick, self.by_fn)

    def close(self) -> None:
        if self.by_fn is not None:
            self.by_fn.close()
            self.by_fn = None


def _build_by(spec: str):
    from rewards.plugins import RewardSpecError, build

    try:
        return build(spec)
    except RewardSpecError as e:
        raise UserError(f"--by {spec}: {e}") from None


def mix_rows(other: pa.Table, n: int, seed: int, fmt: str, name: str) -> list[dict]:
    """`n` rows of `other` drawn without replacement (seeded), in `fmt`, tagged with their source."""
    picked = sorted(random.Random(seed).sample(range(other.num_rows), n))
    rows = other.take(picked).to_pylist() if picked else []
    out = []
    for i, r in zip(picked, rows):
        if fmt == "messages":
            body = {"messages": r["messages"] if "messages" in r else to_messages(r["prompt"], r["completion"])}
        else:
            completion = r["completion"] if is_messages(r["completion"]) else as_completion(r["prompt"], r["completion"])
            body = {"prompt": r["prompt"], "completion": completion}
        out.append({**body, "id": str(r["id"]) if r.get("id") is not None else f"{name}-{i}",
                    "prompt_id": None, "reward": None, "source": f"mix:{name}"})
    return out


def _mix_format(input: str, other: pa.Table, mix: str) -> str:
    if "messages" in other.column_names:
        return "messages"
    if not {"prompt", "completion"} <= set(other.column_names):
        raise UserError(f"{mix}: an SFT set needs a 'messages' column or 'prompt' + 'completion'; "
                        f"found {', '.join(other.column_names)}")
    schema = input_schema(input)
    ours = chat_column(schema, "sampled_prompt" if "sampled_prompt" in schema.names else "prompt")
    theirs = chat_column(other.schema, "prompt") or chat_column(other.schema, "completion")
    return "messages" if ours != theirs else "prompt-completion"


def build_select(input: str, output: str, cfg: SelectConfig = SelectConfig(), *, overwrite: bool = False,
                 progress: bool = True, executor=None) -> dict:
    """Run the select stage (and the mix); returns the summary stored in the manifest."""
    return _build_select(input, output, cfg, overwrite=overwrite, progress=progress, executor=executor)[1]


def _build_select(input: str, output: str, cfg: SelectConfig, **run) -> tuple[StageResult, dict]:
    other = None
    if cfg.mix is not None:
        other = ds.load_table(cfg.mix)
        cfg = replace(cfg, format=_mix_format(input, other, cfg.mix), mix_fingerprint=ds.fingerprint(cfg.mix))
    stage = SelectStage(cfg)
    try:
        result = execute(stage, input, output, **run)
    finally:
        stage.close()
    manifest = result.manifest
    prompts, skipped = read_side(output, "prompts"), read_side(output, "skipped")
    n_selected = sum(p["selected"] for p in prompts)
    summary = {
        "prompts": len(prompts),
        "prompts_with_correct": sum(1 for p in prompts if p["correct"]),
        "selected": n_selected,
        "duplicates_removed": sum(p["correct"] - p["distinct_correct"] for p in prompts),
        "null_rows_skipped": len(skipped),
        "null_reasons": count_by(skipped, "reason"),
    }
    if cfg.by:  # best-of-N: how often the top-ranked completion is correct, against any correct one
        summary["by"] = cfg.by
        summary["selected_correct"] = sum(p.get("selected_correct") or 0 for p in prompts)
        summary["best_of_n_accuracy"] = summary["selected_correct"] / len(prompts) if prompts else None
    if other is not None:
        summary["mix"] = _write_mix(output, manifest, other, cfg, n_selected)
    summary["rows"] = n_selected + summary.get("mix", {}).get("rows", 0)
    if manifest.get("summary") != summary:
        update_manifest(output, summary=summary, rows_out=summary["rows"])
    return result, summary


def _write_mix(output: str, manifest: dict, other: pa.Table, cfg: SelectConfig, n_selected: int) -> dict:
    """Append the mixed rows as shard `num_shards` (after the runner's shards), once."""
    n = round(n_selected * cfg.mix_ratio / (1.0 - cfg.mix_ratio))
    if n > other.num_rows:
        best = other.num_rows / (other.num_rows + n_selected)
        update_manifest(output, complete=False)  # a rerun retries the mix
        raise UserError(f"{cfg.mix}: has {other.num_rows} rows but --mix ratio {cfg.mix_ratio} with {n_selected} "
                        f"selected rows needs {n}; use a ratio <= {best:.4f} or a larger set")
    name = Path(cfg.mix).stem if Path(cfg.mix).exists() else cfg.mix
    path = Path(output) / ds.DATA / f"part-{manifest['num_shards']:05d}.parquet"
    marker = Path(output) / MARKERS / "mix.done"
    if not marker.exists():
        rows = mix_rows(other, n, cfg.seed, cfg.format, name)
        if rows:
            ds.write_parquet_atomic(ds.rows_to_table(rows), path)
            ds.unify_shards(output)
        ds.atomic_write_bytes(marker, b"")
    total = n_selected + n
    return {"source": cfg.mix, "rows": n, "ratio": cfg.mix_ratio, "achieved_ratio": n / total if total else 0.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="labeled rollouts (JSONL, Parquet or dataset directory)")
    p.add_argument("--output", required=True, help="dataset directory to write")
    add_dataclass_options(p, SelectConfig, only=("keep", "min_reward"))
    # one flag for two fields (`parse_mix`), so written by hand
    p.add_argument("--mix", default=None, metavar="OTHER_SFT:RATIO",
                   help="append rows of another SFT set so they make RATIO of the final set (e.g. sft.jsonl:0.3)")
    # the rest: --seed, --by; `format` and `mix_fingerprint` are build_select's, not options
    add_dataclass_options(p, SelectConfig, skip=("mix_ratio", "format", "mix_fingerprint"))
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config")
    add_executor_arguments(p)


def config_from_args(args: argparse.Namespace) -> SelectConfig:
    """The SelectConfig `args` give, field for field (`--mix OTHER:RATIO` is `mix` and `mix_ratio`)."""
    mix, ratio = parse_mix(args.mix) if args.mix else (None, 0.0)
    return from_args(SelectConfig, args, mix=mix, mix_ratio=ratio)


def run(args: argparse.Namespace) -> int:
    result, s = _build_select(args.input, args.output, config_from_args(args), overwrite=args.overwrite,
                              executor=executor_config(args))
    print(f"prompts: {s['prompts']}  with a correct completion: {s['prompts_with_correct']}  "
          f"selected: {s['selected']}  duplicates removed: {s['duplicates_removed']}")
    print(f"null-reward rows skipped: {s['null_rows_skipped']}"
          + "".join(f"\n  {reason}: {n}" for reason, n in s["null_reasons"].items()))
    if "mix" in s:
        print(f"mixed in {s['mix']['rows']} rows of {s['mix']['source']} "
              f"({100 * s['mix']['achieved_ratio']:.1f}% of the set; asked {100 * s['mix']['ratio']:.1f}%)")
    print(written(result, s["rows"], "rows"))
    return 0
