"""`prefsmith train ALGO` as functions: `prefsmith.train.dpo(model=..., data=..., output=..., max_steps=10)`.

Keyword arguments are the algorithm's flags, turned into its command line and parsed by its own parser as in
prefsmith/api.py (options: `prefsmith train ALGO --help`; docs/training.md, docs/online_rl.md, docs/recipes.md).
`model="default"` (and `ref_model="default"`) is the embedded model, as on the command line. Each function
returns a `TrainResult`: the run directory, the final model's folder, the final metrics (train_result.json; the
rounds recipes: each round's row of rounds.jsonl) and the metrics.jsonl records.

The glue after parsing is the CLI's own (trainers/cli.py and the `main` it dispatches to), minus its printing:
a mistake raises `UserError` / `UsageError` instead of printing one line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import UsageError
from prefsmith.api import command_line, materialize


@dataclass
class TrainResult:
    """A finished training run: `path` (the run directory), `model` (the final model's folder, ready for
    `model=`), `summary` (final metrics) and `records` (metrics.jsonl, one dict per logged step)."""

    path: Path
    model: Path
    summary: dict[str, Any] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"TrainResult(model={str(self.model)!r}, records={len(self.records)})"


def run_result(output: str | Path) -> TrainResult:
    """The run in `output` as the trainers wrote it: the model in OUTPUT/model or OUTPUT itself."""
    from trainers.core.metrics import read_metrics

    out = Path(output)
    summary_file = out / "train_result.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    model = out / "model" if (out / "model" / "config.json").is_file() else out
    return TrainResult(out, model, summary, read_metrics(out))


def _prepare(algo: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from pipelines.engines.models import resolve_model

    where = f"prefsmith.train.{algo.replace('-', '_')}"
    options = materialize(options, where)
    for key in ("model", "ref_model"):  # as the CLI does for every `prefsmith train` command
        if options.get(key) == "default":
            options[key] = resolve_model("default")
    return where, options


def _offline(algo: str, options: dict[str, Any]) -> TrainResult:
    from trainers.cli import build_parser, config_from_args
    from trainers.offline.loop import train

    where, options = _prepare(algo, options)
    parser = build_parser()
    args = parser.parse_args([algo, *command_line([parser], options, where, fixed=("algorithm",))])
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None
    train(cfg)
    return run_result(cfg.output)


def _online(algo: str, options: dict[str, Any]) -> TrainResult:
    from pipelines.engines.models import resolve_model
    from trainers.online import grpo

    where, options = _prepare(algo, options)
    parser = grpo.build_parser(f"prefsmith train {algo}")
    args = vars(parser.parse_args(command_line([parser], options, where)))
    if algo == "rloo":
        args["advantage"] = "rloo"
    args["model"] = resolve_model(args["model"])
    grpo.train_grpo(grpo.GRPOConfig(**args))
    return run_result(args["output"])


def _ppo(options: dict[str, Any]) -> TrainResult:
    from pipelines.engines.models import resolve_model
    from trainers.online import ppo
    from trainers.online.grpo import train_grpo

    where, options = _prepare("ppo", options)
    parser = ppo.build_parser()
    args = vars(parser.parse_args(command_line([parser], options, where)))
    args["model"] = resolve_model(args["model"])
    train_grpo(ppo.PPOConfig(**args), run_class=ppo.PPORun)
    return run_result(args["output"])


def _rounds(recipe: str, options: dict[str, Any]) -> TrainResult:
    """The rounds' own flags and every flag of the per-round `train dpo|sft` (trainers/rounds/cli.py)."""
    from trainers.cli import build_parser
    from trainers.core.metrics import read_metrics
    from trainers.rounds import cli as rounds_cli
    from trainers.rounds.driver import run_rounds

    where, options = _prepare(recipe, options)
    argv = command_line([rounds_cli.build_parser(recipe), build_parser()], options, where)
    cfg = rounds_cli.parse(argv, recipe)
    records = run_rounds(cfg)
    out = Path(cfg.output)
    rows = read_metrics(out / "rounds.jsonl")
    model = Path(records[-1]["model"]) if records else Path(cfg.model)
    return TrainResult(out, model, {"rounds": rows}, rows)


def sft(**options: Any) -> TrainResult:
    """`prefsmith train sft`: supervised fine-tuning (docs/training.md)."""
    return _offline("sft", options)


def dpo(**options: Any) -> TrainResult:
    """`prefsmith train dpo`: DPO and its variants via `loss=` (docs/training.md, docs/objectives.md)."""
    return _offline("dpo", options)


def kto(**options: Any) -> TrainResult:
    """`prefsmith train kto` (docs/training.md)."""
    return _offline("kto", options)


def rm(**options: Any) -> TrainResult:
    """`prefsmith train rm`: a Bradley-Terry reward model (docs/training.md)."""
    return _offline("rm", options)


def prm(**options: Any) -> TrainResult:
    """`prefsmith train prm`: a process reward model (docs/prm.md)."""
    return _offline("prm", options)


def grpo(**options: Any) -> TrainResult:
    """`prefsmith train grpo`: online RL from the policy's rollouts (docs/online_rl.md)."""
    return _online("grpo", options)


def rloo(**options: Any) -> TrainResult:
    """`prefsmith train rloo`: grpo with the leave-one-out baseline (docs/online_rl.md)."""
    return _online("rloo", options)


def ppo(**options: Any) -> TrainResult:
    """`prefsmith train ppo`: online RL with a value model (docs/online_rl.md)."""
    return _ppo(options)


def iterative_dpo(**options: Any) -> TrainResult:
    """`prefsmith train iterative-dpo`: rounds of sample, label, pair, train DPO (docs/recipes.md); `model` is the
    last round's policy, `summary["rounds"]` and `records` the rounds table."""
    return _rounds("iterative-dpo", options)


def rft(**options: Any) -> TrainResult:
    """`prefsmith train rft`: rounds of sample, keep the correct, train SFT (docs/recipes.md)."""
    return _rounds("rft", options)


# algorithm (as `prefsmith train` names it) -> its function
TRAINERS = {"sft": sft, "dpo": dpo, "kto": kto, "rm": rm, "prm": prm, "grpo": grpo, "rloo": rloo, "ppo": ppo,
            "iterative-dpo": iterative_dpo, "rft": rft}
