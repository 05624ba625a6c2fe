"""The options of `prefsmith train sft|dpo|kto|rm|prm`, which each round of `prefsmith train iterative-dpo|rft`
reuses for its training run (trainers/rounds/cli.py): the parser, and the checked TrainConfig it gives.

They live apart from trainers/cli.py, which dispatches every `prefsmith train` command (the rounds' included),
so the rounds' command line builds on them without importing the dispatcher back. A new knob is a TrainConfig
field plus its flag here.
"""
from __future__ import annotations

import argparse

from pipelines.cli import Parser
from pipelines.core import hub
from pipelines.core.options import add_dataclass_options, from_args
from pipelines.core.threads import add_threads_argument
from pipelines.core.tracking import add_report_to_argument
from trainers.offline.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    """The options are TrainConfig's fields (`add_dataclass_options`: help from each field's comment, defaults from
    the field), grouped for --help; `--lr`'s default and the positional algorithm are the only hand-written ones."""
    from trainers.offline.algorithms import ALGORITHMS, DPO_LOSSES  # torch: only for `train`, not `plot`

    names = list(ALGORITHMS)
    p = Parser(prog="prefsmith train", description=f"Train a model: {' | '.join(names)}.")
    p.add_argument("algorithm", choices=names, help=f"{', '.join(names)} (dpo's variants via --loss)")
    lrs = ", ".join(f"{a.default_lr:g} {name}".replace("e-0", "e-") for name, a in ALGORITHMS.items())
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: TRL's, {lrs})")
    add_threads_argument(p)
    for title, fields in GROUPS:
        add_dataclass_options(p.add_argument_group(title), TrainConfig, only=fields,
                              choices={"loss": list(DPO_LOSSES)}, skip=("extra",))
    add_report_to_argument(p.add_argument_group("logging"))
    add_dataclass_options(p, TrainConfig, skip=("extra", "algorithm"))  # a new field gets its flag even ungrouped
    hub.add_arguments(p, command_line_only=True)  # `prefsmith train` takes them off the command line (trainers/cli.py)
    return p


# --help's groups, in order (fields not listed still get a flag, after these)
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("inputs and outputs", ("model", "data", "output", "eval_data", "eval_split", "eval_every")),
    ("optimisation", ("epochs", "max_steps", "batch_size", "grad_accum", "warmup_ratio", "warmup_steps", "scheduler",
                      "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm", "device", "dtype",
                      "gradient_checkpointing", "seed", "max_length", "chat_template", "shuffle", "group_by_length")),
    ("checkpoints", ("save_every", "save_total_limit", "resume")),
    ("reference model", ("ref_model", "no_reference", "ref_cache_dir")),
    ("objective", ("loss", "beta", "label_smoothing", "simpo_gamma", "dpop_lambda", "desirable_weight",
                   "undesirable_weight", "rm_center_coef", "prm_soft", "step_separator")),
    ("distributed (torchrun)", ("fsdp",)),
    ("LoRA (needs peft)", ("lora_r", "lora_alpha", "lora_dropout")),
    ("logging", ("logging_every", "progress", "plots")),
)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run `args` describe, field for field, checked against the algorithms (`check_config`): a ValueError
    names the flag."""
    from pipelines.engines.models import resolve_model
    from trainers.offline.algorithms import ALGORITHMS, check_config

    for name in ("model", "ref_model"):  # `default` given in a --config file (the command line's is resolved earlier)
        if getattr(args, name) == "default":
            setattr(args, name, resolve_model("default"))
    cfg = from_args(TrainConfig, args, lr=ALGORITHMS[args.algorithm].default_lr if args.lr is None else args.lr,
                    step_separator=_unescape(args.step_separator) if args.step_separator else None)
    check_config(cfg)
    return cfg


def _unescape(text: str) -> str:
    """`--step-sep '\\n\\n'` typed in a shell -> two newlines."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
