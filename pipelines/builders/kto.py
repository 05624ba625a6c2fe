"""`prefsmith kto`: unpaired KTO rows (binary labels) from scored rollouts, with class-balance weights.

- `label = reward >= threshold` (default 0.5: the midpoint of [0, 1] rewards, and for {0, 1} rewards the
  same as 1.0); `--label-column COL` labels from another column instead: a boolean column is used as is, a
  numeric one is compared with the threshold (e.g. a judge's score: `--from-column judge_score --threshold 7`,
  the same flag under the name docs/judges.md uses).
- rows whose score is null (or NaN) are skipped and counted by the reason in `reward_info` (for a column
  `X_score`, the reason in `X_reason`: `judge_score` -> `judge_reason`).
- output: `prompt`, `completion`, `label` (+ `id`, `prompt_id`, `reward` and the prompt-level columns);
  `prompt` is the context the sample was drawn in (the rollout's `sampled_prompt`). A conversational
  prompt keeps its message list and `completion` becomes a one-message assistant list
  (TRL's conversational unpaired-preference format); a text prompt gets a string completion. A trajectory's
  completion is its messages after the prompt, with `completion_ids` / `completion_mask` (`samples.sampled_side`).
- weights: the KTO paper (Ethayarajh et al. 2024, Eq. 8) recommends
  `lambda_D * n_D / (lambda_U * n_U)` in [1, 4/3]. We fix `undesirable_weight = 1` and take the
  `desirable_weight` in that range closest to the paper's default 1: it stays 1 when the data already
  satisfies the bound, otherwise it is the nearest end: `n_U / n_D` when desirable rows are the minority
  (ratio exactly 1), `(4/3) * n_U / n_D` when they are the majority. These satisfy TRL's KTOTrainer check.
  Written to the manifest as `"kto": {...}` for `prefsmith train kto` to pick up.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

from pipelines.core.dataset import load_table
from pipelines.core.options import add_dataclass_options, from_args
from pipelines.errors import UserError
from pipelines.builders.samples import (BuilderStage, carried, context, count_by, read_side, row_id, sampled_side,
                                        score_rows)
from pipelines.core.runner import Shard, StageResult, execute, update_manifest, written
from pipelines.executors import add_executor_arguments, executor_config

KTO_BOUND = (1.0, 4.0 / 3.0)  # Eq. 8: lambda_D * n_D / (lambda_U * n_U) in this range


@dataclass
class KTOConfig:
    """The options of `prefsmith kto` (its flags come from these fields: `add_arguments`)."""

    threshold: float = 0.5  # label = score >= threshold
    label_column: str = "reward"  # column to label from (a boolean column is the label itself)


@dataclass
class KTOWeights:
    desirable_weight: float
    undesirable_weight: float
    n_desirable: int
    n_undesirable: int
    warning: str | None = None


def kto_weights(n_desirable: int, n_undesirable: int) -> KTOWeights:
    """Class weights inside the KTO paper's bound (see module docstring).

    >>> kto_weights(10, 90).desirable_weight
    9.0
    """
    if n_desirable == 0 or n_undesirable == 0:
        which = "desirable" if n_desirable == 0 else "undesirable"
        return KTOWeights(1.0, 1.0, n_desirable, n_undesirable,
                          warning=f"no {which} rows: KTO needs both classes; lower/raise --threshold or add data")
    ratio = n_undesirable / n_desirable
    weight = min(max(1.0, KTO_BOUND[0] * ratio), KTO_BOUND[1] * ratio)
    # float rounding can leave weight * n_D / n_U a hair outside the bound; step to the nearest float inside,
    # so that exact checks (ours in the trainer, TRL's) agree
    while weight * n_desirable / n_undesirable < KTO_BOUND[0]:
        weight = math.nextafter(weight, math.inf)
    while weight * n_desirable / n_undesirable > KTO_BOUND[1]:
        weight = math.nextafter(weight, 0.0)
    return KTOWeights(weight, 1.0, n_desirable, n_undesirable)


def kto_rows(rows: list[dict], cfg: KTOConfig) -> dict[str, list[dict]]:
    """The row-level core of `kto`: scored rows -> KTO rows with a binary `label`, plus the null rows skipped."""
    valid, skipped = score_rows(rows, cfg.label_column)
    if skipped and cfg.label_column.endswith("_score"):
        why = cfg.label_column.removesuffix("_score") + "_reason"  # judge_score -> judge_reason
        reasons = {row_id(r, r["sample_idx"] if r.get("sample_idx") is not None else pos): r.get(why)
                   for pos, r in enumerate(rows)}
        skipped = [{**s, "reason": f"{cfg.label_column} is null: {reasons[s['id']]}"} if reasons.get(s["id"]) else s
                   for s in skipped]
    out = []
    for s in valid:
        row = s.row
        value = row[cfg.label_column]
        label = value if isinstance(value, bool) else s.reward >= cfg.threshold
        out.append({"prompt": context(row), **sampled_side(row), "label": bool(label), "id": s.id, "prompt_id": row.get("prompt_id"),
                    "reward": row.get("reward"), **carried(row)})
    return {"rows": out, "skipped": skipped}


class KTOStage(BuilderStage):
    name = "kto"

    def present(self) -> list[str]:
        return [self.cfg.label_column]

    def process(self, rows: list[dict], shard: Shard) -> dict:
        return kto_rows(rows, self.cfg)


def build_kto(input: str, output: str, cfg: KTOConfig = KTOConfig(), *, overwrite: bool = False,
              progress: bool = True, executor=None) -> dict:
    """Run the kto stage; returns the manifest fields `summary` and `kto` (the weights)."""
    return _build_kto(input, output, cfg, overwrite=overwrite, progress=progress, executor=executor)[1]


def _build_kto(input: str, output: str, cfg: KTOConfig, **run) -> tuple[StageResult, dict]:
    result = execute(KTOStage(cfg), input, output, **run)
    labels = load_table(output).column("label").to_pylist() if result.manifest.get("rows_out") else []
    n_desirable = sum(labels)
    weights = kto_weights(n_desirable, len(labels) - n_desirable)
    skipped = read_side(output, "skipped")
    fields = {
        "summary": {"rows": len(labels), "desirable_fraction": n_desirable / len(labels) if labels else None,
                    "null_rows_skipped": len(skipped), "null_reasons": count_by(skipped, "reason")},
        "kto": {k: v for k, v in asdict(weights).items() if v is not None},
    }
    if {k: result.manifest.get(k) for k in fields} != fields:
        update_manifest(output, **fields)
    return result, fields


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="labeled rollouts (JSONL, Parquet or dataset directory)")
    p.add_argument("--output", required=True, help="dataset directory to write")
    add_dataclass_options(p, KTOConfig, only=("threshold",))
    # two spellings (docs/judges.md says --from-column), which a field's one flag cannot give: written by hand
    p.add_argument("--label-column", "--from-column", dest="label_column", default=KTOConfig.label_column,
                   help="column to label from (default reward; e.g. judge_score); a boolean column is used as the "
                        "label directly")
    add_dataclass_options(p, KTOConfig)  # a new field gets its flag too
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config")
    add_executor_arguments(p)


def run(args: argparse.Namespace) -> int:
    result, fields = _build_kto(args.input, args.output, from_args(KTOConfig, args), overwrite=args.overwrite,
                                executor=executor_config(args))
    s, w = fields["summary"], fields["kto"]
    if not s["rows"]:
        raise UserError(f"{args.input}: every row has a null {args.label_column}; nothing to label")
    print(f"rows: {s['rows']}  desirable: {w['n_desirable']} ({100 * s['desirable_fraction']:.1f}%)  "
          f"undesirable: {w['n_undesirable']}")
    print(f"null rows skipped: {s['null_rows_skipped']}"
          + "".join(f"\n  {reason}: {n}" for reason, n in s["null_reasons"].items()))
    print(f"weights (KTO Eq. 8, ratio in [1, 4/3]): desirable_weight={w['desirable_weight']:.4g} "
          f"undesirable_weight={w['undesirable_weight']:.4g}")
    if w.get("warning"):
        print(f"warning: {w['warning']}")
    print(written(result, s["rows"], "rows"))
    return 0
