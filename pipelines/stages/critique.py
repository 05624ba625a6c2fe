"""`prefsmith critique-revise`: Constitutional AI's critique-revise loop over a prompt set (judges/constitutional.py).

Each row's `completion` (or, when the row has none, the model's own first answer) is critiqued against a
principle drawn from the constitution and revised, `--rounds` times. Output rows keep every input column and
set `completion` to the final revision, `original_completion` to the response the loop started from, and
`trace` to the rounds (`round`, `principle`, `critique`, `revision`), and `critique_error` to null, or to the
model's refusal (`too_long: ...`: the conversation outgrew its context) where a row's loop stopped early. A
side dataset `DIR/preferences/` holds one preference row per prompt whose revision differs from the original:
`prompt`, `chosen` (the revision), `rejected` (the original), `prompt_id`, `principles` - ready for
`prefsmith train dpo --data DIR/preferences`.

The model is reached as for `prefsmith judge` (`--engine openai --base-url URL`, `--concurrency`, retries, the
reply cache that makes a killed run resume without asking again; docs/judges.md).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from judges.constitutional import (Constitution, ConstitutionError, CritiqueConfig, critique_revise,
                                   load_constitution)
from judges.protocol import ChatModel
from pipelines.builders.samples import as_completion, normalize_text
from pipelines.core.options import add_dataclass_options, from_args
from pipelines.core.runner import Shard
from pipelines.errors import UserError
from pipelines.executors import add_executor_arguments, executor_config
from rewards.chat import completion_text

from .judge import ChatModelConfig, ChatStage, add_model_arguments, chat_model, model_settings, run_chat_stage


@dataclass
class CritiqueStageConfig(ChatModelConfig):
    """The model and how to reach it (`ChatModelConfig`, as for `judge`), the constitution and the loop."""
    constitution: Constitution = field(default_factory=load_constitution)  # --constitution NAME|FILE (by hand)
    loop: CritiqueConfig = field(default_factory=CritiqueConfig)


def prompt_keys(rows: list[dict], start: int) -> list[str]:
    """The row's `prompt_id`, else `id`, else its position: what draws its principles."""
    return [str(r.get("prompt_id") or r.get("id") or f"row{start + i:07d}") for i, r in enumerate(rows)]


class CritiqueStage(ChatStage):
    name = "critique-revise"

    def __init__(self, cfg: CritiqueStageConfig, model: ChatModel | None = None):
        if cfg.loop.rounds < 1:
            raise UserError(f"--rounds must be >= 1, got {cfg.loop.rounds}")
        self.cfg, self.model = cfg, model

    def config(self) -> dict:
        return {"model": self.cfg.model, "engine": self.cfg.engine, "constitution": self.cfg.constitution.to_dict(),
                "loop": asdict(self.cfg.loop)}

    def required(self) -> list[str]:
        return ["prompt"]

    def process(self, rows: list[dict], shard: Shard) -> dict:
        keys = prompt_keys(rows, shard.start)
        responses = [completion_text(r["completion"]) if r.get("completion") is not None else None for r in rows]
        done = critique_revise(self.model, [r["prompt"] for r in rows], responses, keys, self.cfg.constitution,
                               self.cfg.loop)
        out, prefs = [], []
        for row, key, res in zip(rows, keys, done):
            out.append({**row, "completion": as_completion(row["prompt"], res.final),
                        "original_completion": as_completion(row["prompt"], res.original), "trace": res.trace,
                        "critique_error": res.error})
            if normalize_text(res.final) != normalize_text(res.original) and res.final.strip():
                prefs.append({"prompt": row["prompt"], "chosen": as_completion(row["prompt"], res.final),
                              "rejected": as_completion(row["prompt"], res.original), "prompt_id": key,
                              "principles": [t["principle"] for t in res.trace]})
        shard.tick(len(rows))
        return {"rows": out, "preferences": prefs,
                "stats": {"rows": len(rows), "preference_rows": len(prefs),
                          "generated_first": sum(r is None for r in responses),
                          "refused": sum(res.error is not None for res in done)}}


def critique(input: str, output: str, cfg: CritiqueStageConfig, *, overwrite: bool = False, progress: bool = True,
             executor=None, out=None) -> dict[str, Any]:
    """Run the stage (Python API of `prefsmith critique-revise`); returns the manifest's stats."""
    result = run_chat_stage(CritiqueStage(cfg, chat_model(cfg)), input, output, overwrite=overwrite,
                            progress=progress, executor=executor)
    stats = result.manifest.get("stats", {})
    print(f"critique-revise ({cfg.constitution.name}, {cfg.loop.rounds} rounds): {int(stats.get('rows', 0))} rows, "
          f"{int(stats.get('preference_rows', 0))} preference rows (revision > original) in {output}/preferences",
          file=out or sys.stdout)
    return stats


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options are `CritiqueStageConfig`'s fields (`ChatModelConfig`'s, through `add_model_arguments`) and its
    `loop` (`CritiqueConfig`)'s; written by hand: the run's (input, output, shard size, overwrite, progress,
    executor), `--constitution` (a name or file, loaded into the Constitution the config holds), `--threads` and
    `--no-cache`."""
    p.add_argument("--input", required=True, help="prompts (with an optional completion to start from)")
    p.add_argument("--output", required=True, help="dataset directory to write")
    add_model_arguments(p)
    p.add_argument("--constitution", default="default", help="`default` (data/constitutions/) or a YAML file")
    add_dataclass_options(p, CritiqueStageConfig, skip=("loop", "shard_size"))  # a new field gets its flag
    add_dataclass_options(p, CritiqueConfig)  # --rounds, --temperature, --max-new-tokens, --seed
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"input rows per shard, the unit of resume (default {CritiqueStage.shard_size})")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_arguments(p)


def config_from_args(args: argparse.Namespace) -> CritiqueStageConfig:
    """The CritiqueStageConfig `add_arguments`' flags give, level by level (`from_args`), checked."""
    try:
        constitution = load_constitution(args.constitution)
    except ConstitutionError as err:
        raise UserError(f"--constitution: {err}") from None
    return from_args(CritiqueStageConfig, args, constitution=constitution, loop=from_args(CritiqueConfig, args),
                     **model_settings(args))


def run(args: argparse.Namespace) -> int:
    critique(args.input, args.output, config_from_args(args), overwrite=args.overwrite,
             progress=not args.no_progress, executor=executor_config(args))
    return 0
