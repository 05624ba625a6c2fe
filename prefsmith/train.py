"""`prefsmith train ALGO` as functions: `prefsmith.train.dpo(model=..., data=..., output=..., max_steps=10)`.

Keyword arguments are the algorithm's flags, turned into its command line and parsed by its own parser as in
prefsmith/api.py (options: `prefsmith train ALGO --help`; docs/training.md, docs/online_rl.md, docs/recipes.md).
`model="default"` (and `ref_model="default"`) is the embedded model, as on the command line. Each function
returns a `TrainResult`: the run directory, the final model's folder, the final metrics (train_result.json; the
rounds recipes: each round's row of rounds.jsonl) and the metrics.jsonl records.

The keywords are checked by the algorithm's own parsers first (`UsageError`), then `prefsmith train ALGO` runs in
this process through the CLI's own entry point, so `--config`, `--push-to-hub` and every check behave as on the
command line; a run that fails raises `UserError` with the message the command printed.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
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
    """The run in `output` as the trainer wrote it (its final model where `prefsmith train --push-to-hub` finds it)."""
    from trainers.core.card import final_model_dir
    from trainers.core.metrics import read_metrics

    out = Path(output)
    summary_file = out / "train_result.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return TrainResult(out, final_model_dir(out), summary, read_metrics(out))


class _ErrorLine(io.TextIOBase):
    """stderr as it is, remembering the last `...: error: MESSAGE` line the command printed."""

    def __init__(self, stream):
        self.stream, self.message = stream, None

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if ": error: " in line:
                self.message = line.split(": error: ", 1)[1]
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


def _train(algo: str, options: dict[str, Any]) -> Path:
    """`prefsmith train ALGO` with `options` as its flags: checked by its parsers (UsageError), then run by the
    CLI's own entry point (trainers/cli.py `main`: --config, --push-to-hub and every check as on the command
    line); a run that fails raises UserError with the line the command printed. Returns the output folder."""
    from pipelines.engines.models import resolve_model
    from trainers import cli

    where = f"prefsmith.train.{algo.replace('-', '_')}"
    options = materialize(options, where)
    for key in ("model", "ref_model"):  # as `prefsmith train` does with `default`
        if options.get(key) == "default":
            options[key] = resolve_model("default")
    parsers = _parsers(algo)
    argv = [algo, *command_line(parsers, options, where, fixed=("algorithm",))]
    cli.check_args(argv)
    offline = algo not in (*cli.ONLINE, "ppo", *cli.ROUNDS)  # its parser takes the algorithm as a positional
    output = parsers[0].parse_known_args(argv if offline else argv[1:])[0].output  # --config may give it
    errors = _ErrorLine(sys.stderr)
    with contextlib.redirect_stderr(errors):
        status = cli.main(argv)
    if status:
        raise UserError(f"{where}: {errors.message or f'`prefsmith train {algo}` ended with status {status}'}")
    return Path(output)


def _parsers(algo: str) -> list:
    """The parsers whose flags `prefsmith train ALGO` takes (a recipe: its own, then the per-round trainer's)."""
    from trainers import cli

    if algo in cli.ONLINE:
        from trainers.online import grpo

        return [grpo.build_parser(f"prefsmith train {algo}")]
    if algo == "ppo":
        from trainers.online import ppo

        return [ppo.build_parser()]
    if algo in cli.ROUNDS:
        from trainers.rounds import cli as rounds_cli

        return [rounds_cli.build_parser(algo), cli.build_parser()]
    return [cli.build_parser()]


def _run(algo: str, options: dict[str, Any]) -> TrainResult:
    return run_result(_train(algo, options))


def _rounds(recipe: str, options: dict[str, Any]) -> TrainResult:
    """A recipe's run: `model` is the last round's policy, `summary["rounds"]` and `records` its rounds.jsonl."""
    from trainers.core.metrics import read_metrics

    from trainers.core.card import final_model_dir

    out = _train(recipe, options)
    rows = read_metrics(out / "rounds.jsonl")
    return TrainResult(out, final_model_dir(out), {"rounds": rows}, rows)


def sft(**options: Any) -> TrainResult:
    """`prefsmith train sft`: supervised fine-tuning (docs/training.md)."""
    return _run("sft", options)


def dpo(**options: Any) -> TrainResult:
    """`prefsmith train dpo`: DPO and its variants via `loss=` (docs/training.md, docs/objectives.md)."""
    return _run("dpo", options)


def kto(**options: Any) -> TrainResult:
    """`prefsmith train kto` (docs/training.md)."""
    return _run("kto", options)


def rm(**options: Any) -> TrainResult:
    """`prefsmith train rm`: a Bradley-Terry reward model (docs/training.md)."""
    return _run("rm", options)


def prm(**options: Any) -> TrainResult:
    """`prefsmith train prm`: a process reward model (docs/prm.md)."""
    return _run("prm", options)


def grpo(**options: Any) -> TrainResult:
    """`prefsmith train grpo`: online RL from the policy's rollouts (docs/online_rl.md)."""
    return _run("grpo", options)


def rloo(**options: Any) -> TrainResult:
    """`prefsmith train rloo`: grpo with the leave-one-out baseline (docs/online_rl.md)."""
    return _run("rloo", options)


def ppo(**options: Any) -> TrainResult:
    """`prefsmith train ppo`: online RL with a value model (docs/online_rl.md)."""
    return _run("ppo", options)


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
