"""`prefsmith pairs`: DPO preference pairs from scored rollouts, per prompt.

Rules (see docs/builders.md):
- rows with a null (or NaN) reward are skipped and counted by the reason in `reward_info`;
- a pair (chosen, rejected) needs `score_chosen - score_rejected > min_margin` (default 0, so ties never
  pair) and completions that differ after whitespace normalization; with `min_edit_distance > 0` it also
  needs a normalized Levenshtein distance >= min_edit_distance;
- `best-worst`: the allowed pair with the largest margin: the highest reward against the lowest; ties
  broken by the earliest `sample_idx` (chosen first, then rejected). One pair per prompt.
- `all`: every allowed pair, largest margin first (same tie order); `--max-per-prompt K` keeps the first K.
- `random`: K allowed pairs (default 1) drawn uniformly without replacement, seeded by (seed, prompt_id),
  so the result does not depend on sharding or resume.

Output: `prompt`, `chosen`, `rejected`, `score_chosen`, `score_rejected`, `prompt_id`, `chosen_id`,
`rejected_id`, plus the prompt-level columns (`answer`, `prompt_token_ids`, ...: columns with one value across
the prompt's samples; a column that differs between samples is null). `prompt` is the context the samples were
drawn in (`samples.context`: the rollout's `sampled_prompt`). A conversational prompt (list of messages)
stays a list and `chosen`/`rejected` become one-message assistant lists (TRL's conversational preference
format); a text prompt gets string `chosen`/`rejected`. Trajectories (`generate --env`) give each side's messages
after the prompt and `chosen_ids`/`chosen_mask`, `rejected_ids`/`rejected_mask` (`samples.sampled_side`). Side datasets: `DIR/prompts/` (one row per prompt:
counts and the reason it has no pair) and `DIR/skipped/` (null-reward rows with their reason).
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field

from pipelines.core.options import add_dataclass_options, from_args
from pipelines.errors import UserError
from pipelines.builders.samples import (PromptGroupStage, Sample, context, count_by, group_rows, prompt_columns,
                                        read_side, sampled_side, score_rows)
from pipelines.builders.similarity import edit_distance
from pipelines.core.runner import Shard, StageResult, execute, update_manifest, written
from pipelines.executors import add_executor_arguments, executor_config

STRATEGIES = ("best-worst", "all", "random")


@dataclass
class PairsConfig:
    """The options of `prefsmith pairs` (its flags come from these fields: `add_arguments`)."""

    strategy: str = field(default="best-worst", metadata={"choices": STRATEGIES, "help": (
        "best-worst: top vs bottom reward (1 pair/prompt); all: every pair; random: seeded random pairs")})
    min_margin: float = 0.0  # a pair needs score_chosen - score_rejected > this (default 0: ties never pair)
    max_per_prompt: int | None = None  # at most K pairs per prompt (all: largest margins first; random: default 1)
    seed: int = 0  # seed of the random strategy
    min_edit_distance: float = field(default=0.0, metadata={"help": (
        "skip pairs whose normalized Levenshtein distance is below this (e.g. 0.1); 0 = off")})

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.min_margin < 0:
            raise UserError(f"--min-margin must be >= 0 (ties never pair), got {self.min_margin}")
        if self.max_per_prompt is not None and self.max_per_prompt < 1:
            raise UserError(f"--max-per-prompt must be >= 1, got {self.max_per_prompt}")
        if self.strategy == "best-worst" and (self.max_per_prompt or 1) > 1:
            raise UserError("--strategy best-worst makes one pair per prompt; for more use --strategy all "
                            "(largest margins first) or random with --max-per-prompt")
        if not 0.0 <= self.min_edit_distance <= 1.0:
            raise UserError(f"--min-edit-distance must be in [0, 1], got {self.min_edit_distance}")


@dataclass
class PromptPairs:
    """The pairs of one prompt and why some candidates were dropped."""
    pairs: list[tuple[Sample, Sample]]
    reason: str | None  # why there is no pair: all_null, single_valid_sample, all_tied, below_margin, identical, too_similar
    skipped_identical: int = 0
    skipped_similar: int = 0


def _ordered_candidates(valid: list[Sample], margin: float) -> list[tuple[Sample, Sample]]:
    """Every (higher, lower) pair with a margin above `margin`: largest margin first, then earliest samples."""
    by_order = sorted(valid, key=lambda s: s.order)
    cands = [(a, b) if a.reward > b.reward else (b, a)
             for i, a in enumerate(by_order) for b in by_order[i + 1:] if abs(a.reward - b.reward) > margin]
    cands.sort(key=lambda p: (-(p[0].reward - p[1].reward), p[0].order, p[1].order))
    return cands


def build_prompt_pairs(valid: list[Sample], cfg: PairsConfig, prompt_id: object) -> PromptPairs:
    """Pure pair rules for one prompt's valid samples (see module docstring)."""
    if not valid:
        return PromptPairs([], "all_null")
    if len(valid) == 1:
        return PromptPairs([], "single_valid_sample")
    if len({s.reward for s in valid}) == 1:
        return PromptPairs([], "all_tied")
    cands = _ordered_candidates(valid, cfg.min_margin)
    if not cands:
        return PromptPairs([], "below_margin")
    if cfg.strategy == "random":
        rng = random.Random(f"{cfg.seed}:{prompt_id}")
        rng.shuffle(cands)
    limit = 1 if cfg.strategy == "best-worst" else cfg.max_per_prompt or (1 if cfg.strategy == "random" else None)
    out = PromptPairs([], None)
    for chosen, rejected in cands:
        if limit is not None and len(out.pairs) >= limit:
            break
        if chosen.text == rejected.text:
            out.skipped_identical += 1
        elif cfg.min_edit_distance > 0 and _too_similar(chosen.text, rejected.text, cfg.min_edit_distance):
            out.skipped_similar += 1
        else:
            out.pairs.append((chosen, rejected))
    if not out.pairs:
        out.reason = "too_similar" if out.skipped_similar else "identical"
    return out


def _too_similar(a: str, b: str, min_distance: float) -> bool:
    # the length difference is a lower bound of the edit distance: enough to clear most pairs without the DP
    if abs(len(a) - len(b)) >= min_distance * max(len(a), len(b)):
        return False
    return edit_distance(a, b) < min_distance


def pair_row(chosen: Sample, rejected: Sample, shared: dict) -> dict:
    return {
        "prompt": context(chosen.row),
        **sampled_side(chosen.row, "chosen"),
        **sampled_side(rejected.row, "rejected"),
        "score_chosen": chosen.reward,
        "score_rejected": rejected.reward,
        "prompt_id": chosen.row["prompt_id"],
        "chosen_id": chosen.id,
        "rejected_id": rejected.id,
        **shared,
    }


def pairs_rows(rows: list[dict], cfg: PairsConfig, tick=lambda n: None) -> dict[str, list[dict]]:
    """The row-level core of `pairs`: scored rollouts (each prompt's rows together) -> pair rows, plus the
    per-prompt record (`prompts`) and the null rows left out (`skipped`)."""
    pairs, prompts, skipped = [], [], []
    for group in group_rows(rows):
        valid, nulls = score_rows(group)
        result = build_prompt_pairs(valid, cfg, group[0]["prompt_id"])
        shared = prompt_columns(group)
        pairs += [pair_row(c, r, shared) for c, r in result.pairs]
        skipped += nulls
        prompts.append({"prompt_id": group[0]["prompt_id"], "rows": len(group), "valid": len(valid),
                        "null": len(nulls), "pairs": len(result.pairs), "no_pair_reason": result.reason,
                        "skipped_identical": result.skipped_identical,
                        "skipped_similar": result.skipped_similar})
        tick(len(group))
    return {"rows": pairs, "prompts": prompts, "skipped": skipped}


class PairsStage(PromptGroupStage):
    name = "pairs"

    def process(self, rows: list[dict], shard: Shard) -> dict:
        return pairs_rows(rows, self.cfg, shard.tick)


def summarize(output: str) -> dict:
    """Counts over the whole output, read back from its side datasets (correct after a resume too)."""
    prompts = read_side(output, "prompts")
    skipped = read_side(output, "skipped")
    no_pair = [p for p in prompts if p["no_pair_reason"]]
    return {
        "prompts": len(prompts),
        "prompts_with_pairs": len(prompts) - len(no_pair),
        "pairs": sum(p["pairs"] for p in prompts),
        "prompts_without_pair": count_by(no_pair, "no_pair_reason"),
        "null_rows_skipped": len(skipped),
        "null_reasons": count_by(skipped, "reason"),
        "pairs_skipped_identical": sum(p["skipped_identical"] for p in prompts),
        "pairs_skipped_similar": sum(p["skipped_similar"] for p in prompts),
    }


def build_pairs(input: str, output: str, cfg: PairsConfig = PairsConfig(), *, overwrite: bool = False,
                progress: bool = True, executor=None) -> dict:
    """Run the pairs stage; returns the summary (also stored in the manifest under `summary`)."""
    return _build_pairs(input, output, cfg, overwrite=overwrite, progress=progress, executor=executor)[1]


def _build_pairs(input: str, output: str, cfg: PairsConfig, **run) -> tuple[StageResult, dict]:
    result = execute(PairsStage(cfg), input, output, **run)
    summary = summarize(output)
    if result.manifest.get("summary") != summary:
        update_manifest(output, summary=summary)
    return result, summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="labeled rollouts (JSONL, Parquet or dataset directory)")
    p.add_argument("--output", required=True, help="dataset directory to write")
    add_dataclass_options(p, PairsConfig, skip=("min_edit_distance",))  # --strategy, --min-margin, ...
    near = p.add_mutually_exclusive_group()  # one near-duplicate filter, said either way
    add_dataclass_options(near, PairsConfig, only=("min_edit_distance",))
    near.add_argument("--max-similarity", type=float, default=None,
                      help="same filter as 1 - similarity: skip pairs more similar than this (0.9 == --min-edit-distance 0.1)")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config")
    add_executor_arguments(p)


def config_from_args(args: argparse.Namespace) -> PairsConfig:
    """The PairsConfig `args` give, field for field (`--max-similarity S` is `min_edit_distance` 1 - S)."""
    near = {} if args.max_similarity is None else {"min_edit_distance": round(1.0 - args.max_similarity, 12)}
    return from_args(PairsConfig, args, **near)


def run(args: argparse.Namespace) -> int:
    result, summary = _build_pairs(args.input, args.output, config_from_args(args), overwrite=args.overwrite,
                                   executor=executor_config(args))
    print(format_summary(summary))
    print(written(result, summary["pairs"], "pairs"))
    return 0


def format_summary(summary: dict) -> str:
    lines = [f"prompts: {summary['prompts']}  with pairs: {summary['prompts_with_pairs']}  pairs: {summary['pairs']}"]
    for reason, n in summary["prompts_without_pair"].items():
        lines.append(f"  no pair ({reason}): {n} prompts")
    lines.append(f"null-reward rows skipped: {summary['null_rows_skipped']}")
    for reason, n in summary["null_reasons"].items():
        lines.append(f"  {reason}: {n}")
    if summary["pairs_skipped_identical"] or summary["pairs_skipped_similar"]:
        lines.append(f"candidate pairs skipped: identical {summary['pairs_skipped_identical']}, "
                     f"near-identical {summary['pairs_skipped_similar']}")
    return "\n".join(lines)

