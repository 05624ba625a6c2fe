"""`prefsmith` command line. Each subcommand lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their command runs, so
`prefsmith --help` and light commands start fast (no torch import)."""
from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
import sys

from pipelines.core import hub
from pipelines.errors import UsageError, UserError
from rewards.pool import PoolError

# OSErrors that are the file system's answer, not a bug: printed as one line naming the path
_FILE_SYSTEM_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                       errno.EISDIR}

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


class Parser(argparse.ArgumentParser):
    """The parser of every prefsmith command (subcommands and pipeline-file stages included): a flag is spelled
    out in full (`--max-new-token` is refused, not taken for `--max-new-tokens`), and a mistake raises
    `UsageError`, which the CLI prints as one line (a pipeline file is checked whole with it before any stage)."""

    def __init__(self, *args, **kwargs):
        from pipelines.core.options import HelpFormatter

        kwargs["allow_abbrev"] = False
        kwargs.setdefault("formatter_class", HelpFormatter)  # shows every option's default
        super().__init__(*args, **kwargs)
        self.also_known: list[str] = []  # flags of a parser that passed its unknown ones here (for suggestions)
        self.config_passthrough = False  # --config keys this parser does not know go on to the next parser
        self._finished = False

    def finish(self) -> "Parser":
        """The common finishing pass (pipelines/core/options.py `finish`): canonical aliases (docs/cli.md), shared
        help, `--config FILE.yaml`. Runs once, before the first parse or help."""
        if not self._finished:
            from pipelines.core.options import finish

            self._finished = True
            finish(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        from pipelines.core.options import config_argv, switch_words

        self.finish()
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(switch_words(self, config_argv(self, args, self.config_passthrough)),
                                        namespace)

    def format_help(self) -> str:
        self.finish()
        return super().format_help()

    def error(self, message: str):
        unknown = message.partition("unrecognized arguments: ")[2].split()
        flags = [a.split("=")[0] for a in unknown if a.startswith("--")]
        parsers = [self, *(sub for a in self._actions if isinstance(a, argparse._SubParsersAction)
                           for sub in a.choices.values())]
        known = [*(f for p in parsers for f in p._option_string_actions), *self.also_known]
        close = [m for f in flags for m in difflib.get_close_matches(f, known, 1, 0.75)]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"{message}{hint} (see `{self.prog} --help`)")


def _top_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="prefsmith",
        description="Post-training data and training: rollouts, rewards, hygiene, training sets, trainers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<{max(map(len, COMMANDS))}}  {v[1]}" for k, v in COMMANDS.items())
        + "\n\nRun `prefsmith COMMAND --help` for a command's options.",
    )
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    p._finished = True  # `--config` belongs to the commands, not to `prefsmith` itself
    return p


def _resolve_default_models(argv: list[str]) -> list[str]:
    """`--model default` / `--ref-model default` → the embedded model's local folder (converted on first use)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in ("--model", "--ref-model") and out[i + 1] == "default":
            from pipelines.engines.models import resolve_model

            out[i + 1] = resolve_model("default")
    return out


# commands whose --output is a dataset directory: they take --push-to-hub (pipelines/core/hub.py)
HUB_COMMANDS = ("generate", "label", "prm-label", "dedup", "decontaminate", "pairs", "judge", "critique-revise", "kto",
                "select", "eval")


def command_parser(name: str, module) -> Parser:
    parser = Parser(prog=f"prefsmith {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    if name in HUB_COMMANDS:
        hub.add_arguments(parser)
    return parser


def check_args(argv: list[str]) -> None:
    """Parse a command line (`[command, flags...]`) without running it: UsageError (or UserError) when it would
    not start. `prefsmith run` checks every stage of a pipeline file with it before the first one runs."""
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}; choose one of {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    if name == "train":
        module.check_args(rest)
    elif name == "plot":
        module.plot_parser().parse_args(rest)
    else:
        args = command_parser(name, module).parse_args(rest)
        if name in HUB_COMMANDS:
            hub.target(args.push_to_hub, args.hub_private)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        try:
            _top_parser().parse_args(argv[:1] or ["--help"])
        except UsageError as e:
            print(f"prefsmith: error: {e}", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        if name in ("train", "plot"):  # trainers parse their own sub-subcommands
            return int((module.main if name == "train" else module.plot_main)(_resolve_default_models(rest)) or 0)
        args = command_parser(name, module).parse_args(rest)
        target = hub.target(args.push_to_hub, args.hub_private) if name in HUB_COMMANDS else None  # before any work
        status = int(module.run(args) or 0)
        if target is not None and status == 0:
            hub.push_dataset(args.output, target)
        return status
    except UserError as e:  # includes the engines' EngineError and the trainers' UserDataError
        print(f"prefsmith {name}: error: {e}", file=sys.stderr)
        return 2
    except PoolError as e:  # a reward worker pool died outside a stage (a training loop): one line, no traceback
        print(f"prefsmith {name}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the file system refused (permissions, read-only, full disk): where and why, no traceback
        if e.errno not in _FILE_SYSTEM_ERRNOS:
            raise
        print(f"prefsmith {name}: error: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
