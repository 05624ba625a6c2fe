"""`prefsmith` command line. Each subcommand lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their command runs, so
`prefsmith --help` and light commands start fast (no torch import)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipelines.errors import UserError
from rewards.pool import PoolError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("pipelines.stages.generate", "sample N completions per prompt (hf | vllm | openai engines)"),
    "label": ("pipelines.stages.label", "apply reward functions to rollouts"),
    "prm-label": ("pipelines.stages.prm_label", "step labels for process reward models (Monte Carlo: mc | binary-search)"),
    "check-gold": ("pipelines.reports.check_gold", "list gold answers that do not parse, before spending compute"),
    "audit-reward": ("pipelines.reports.audit_reward", "probe a reward before training on it: gold health, hacks, agreement"),
    "dedup": ("pipelines.hygiene.dedup", "remove exact and near-duplicate rows (MinHash LSH)"),
    "decontaminate": ("pipelines.hygiene.decontaminate", "remove rows overlapping evaluation sets (n-grams)"),
    "pairs": ("pipelines.builders.pairs", "build DPO preference pairs from scored rollouts"),
    "judge": ("pipelines.stages.judge", "LLM judge: pointwise scores or pairwise preferences (both orders)"),
    "critique-revise": ("pipelines.stages.critique", "Constitutional AI: critique and revise responses against principles"),
    "kto": ("pipelines.builders.kto", "build KTO rows (binary labels) from scored rollouts"),
    "select": ("pipelines.builders.rft", "build rejection-sampling (RFT) SFT sets"),
    "eval": ("pipelines.reports.evaluate", "evaluate a model: accuracy, pass@k, maj@k per group (table, JSON, PNG)"),
    "stats": ("pipelines.reports.stats", "summary table and histograms of a dataset"),
    "export": ("pipelines.reports.export", "write any dataset as JSONL for inspection"),
    "run": ("pipelines.pipeline", "run a pipeline file (YAML): stages in order, resumable"),
    "models": ("pipelines.engines.models", "manage models (fetch-default: convert the embedded default model)"),
    "train": ("trainers.cli", "train: sft | dpo | kto | rm | prm | grpo | rloo | ppo | iterative-dpo | rft"),
    "plot": ("trainers.cli", "plot a training run's metrics"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefsmith",
        description="Post-training data and training: rollouts, rewards, hygiene, training sets, trainers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<14} {v[1]}" for k, v in COMMANDS.items())
        + "\n\nRun `prefsmith COMMAND --help` for a command's options.",
    )
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    return p


def _resolve_default_models(argv: list[str]) -> list[str]:
    """`--model default` / `--ref-model default` → the embedded model's local folder (converted on first use)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in ("--model", "--ref-model") and out[i + 1] == "default":
            from pipelines.engines.models import resolve_model

            out[i + 1] = resolve_model("default")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        if name in ("train", "plot"):  # trainers parse their own sub-subcommands
            return int((module.main if name == "train" else module.plot_main)(_resolve_default_models(rest)) or 0)
        parser = argparse.ArgumentParser(prog=f"prefsmith {name}", description=COMMANDS[name][1])
        module.add_arguments(parser)
        args = parser.parse_args(rest)
        return int(module.run(args) or 0)
    except UserError as e:  # includes the engines' EngineError and the trainers' UserDataError
        print(f"prefsmith {name}: error: {e}", file=sys.stderr)
        return 2
    except PoolError as e:  # a reward worker pool died outside a stage (a training loop): one line, no traceback
        print(f"prefsmith {name}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
