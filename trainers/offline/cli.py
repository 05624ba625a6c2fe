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
from pipelines.core.threads import add_threads_argument
from pipelines.core.tracking import add_report_to_argument
from trainers.offline.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    from trainers.offline.algorithms import ALGORITHMS, DPO_LOSSES  # torch: only for `train`, not `plot`

    names = list(ALGORITHMS)
    p = Parser(prog="prefsmith train", description=f"Train a model: {' | '.join(names)}.")
    p.add_argument("algorithm", choices=names, help=f"{', '.join(names)} (dpo's variants via --loss)")
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--model", required=True, help="local model directory (policy; for rm the reward model's base)")
    g.add_argument("--data", required=True, help="dataset directory (Parquet shards + manifest), .parquet or .jsonl")
    g.add_argument("--output", required=True, help="run directory: final model, checkpoints/, metrics.jsonl, plots/")
    g.add_argument("--eval-data", default=None, help="held-out dataset for eval metrics")
    g.add_argument("--eval-split", type=float, default=0.0, help="hold out this fraction of --data for eval")
    g.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (always at the end)")
    g = p.add_argument_group("optimisation")
    lrs = ", ".join(f"{a.default_lr:g} {name}".replace("e-0", "e-") for name, a in ALGORITHMS.items())
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: TRL's, {lrs})")
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="global examples per optimizer step, summed over processes and accumulation micro-steps")
    g.add_argument("--grad-accum", type=int, default=1, help="split each step into N micro-batches (saves memory)")
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--warmup-steps", type=int, default=None,
                   help="steps spent warming the learning rate up from 0 (overrides --warmup-ratio)")
    g.add_argument("--scheduler", choices=("cosine", "linear", "constant"), default="cosine")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    g.add_argument("--device", default="auto",
                   help="auto (this process's GPU under torchrun, else GPU 0, else the CPU) | cpu | cuda | cuda:N")
    g.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 on CUDA, fp32 on CPU; bf16 is autocast compute over fp32 master weights and AdamW state")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer's activations in backward (less memory, ~30%% more compute)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--max-length", type=int, default=1024, help="truncate prompt+completion to N tokens")
    g.add_argument("--chat-template", default=None, metavar="FILE.jinja",
                   help="Jinja chat template file used instead of the model's to render chat rows (saved with the "
                        "trained model)")
    g.add_argument("--no-shuffle", action="store_true", help="length-sorted order instead of seeded shuffling")
    g.add_argument("--no-group-by-length", action="store_true",
                   help="seeded random batches instead of batches of similar length")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps")
    g.add_argument("--save-total-limit", type=int, default=2, help="keep the newest N checkpoints")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    g = p.add_argument_group("reference model")
    g.add_argument("--ref-model", default=None, help="reference model directory (default: --model)")
    g.add_argument("--no-reference", action="store_true", help="no reference pass (only for --loss simpo/orpo)")
    g.add_argument("--ref-cache-dir", default=None,
                   help="where cached reference log-probs live (default $PREFSMITH_CACHE or ~/.cache/prefsmith)")
    g = p.add_argument_group("objective")
    g.add_argument("--loss", choices=list(DPO_LOSSES), default="sigmoid", help="DPO variant")
    g.add_argument("--beta", type=float, default=None,
                   help="β (default 0.1; SimPO 2.0; for ORPO this is λ, default 0.1; for IPO it is τ)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cDPO / robust DPO label-flip rate")
    g.add_argument("--simpo-gamma", type=float, default=1.0, help="SimPO target margin γ")
    g.add_argument("--dpop-lambda", type=float, default=50.0, help="DPOP penalty weight λ")
    g.add_argument("--desirable-weight", type=float, default=None,
                   help="KTO λ_D (default: the dataset manifest's recommendation, else 1.0)")
    g.add_argument("--undesirable-weight", type=float, default=None, help="KTO λ_U (default as --desirable-weight)")
    g.add_argument("--rm-center-coef", type=float, default=0.0, help="reward model: penalty on (r_w + r_l)^2")
    g.add_argument("--soft", action="store_true", help="prm: BCE on soft_labels (default: cross-entropy on labels)")
    g.add_argument("--step-sep", default=None,
                   help="prm: separator after each step (default: the prm-label dataset's, else TRL's \\n)")
    g = p.add_argument_group("distributed (torchrun)")
    g.add_argument("--fsdp", action="store_true",
                   help="shard weights, gradients and optimizer state over the processes (FSDP2) instead of "
                        "replicating them (docs/training.md)")
    g = p.add_argument_group("LoRA (needs peft)")
    g.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0 trains all weights")
    g.add_argument("--lora-alpha", type=int, default=16)
    g.add_argument("--lora-dropout", type=float, default=0.0)
    add_threads_argument(p)
    g = p.add_argument_group("logging")
    g.add_argument("--logging-every", type=int, default=1, help="write train metrics every N steps")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-plots", action="store_true", help="skip PNG plots at the end")
    add_report_to_argument(g)
    hub.add_arguments(p, command_line_only=True)  # `prefsmith train` takes them off the command line (trainers/cli.py)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run `args` describe, checked against the algorithms (`check_config`): a ValueError names the flag."""
    from pipelines.engines.models import resolve_model
    from trainers.offline.algorithms import ALGORITHMS, check_config

    for name in ("model", "ref_model"):  # `default` given in a --config file (the command line's is resolved earlier)
        if getattr(args, name) == "default":
            setattr(args, name, resolve_model("default"))
    cfg = TrainConfig(
        algorithm=args.algorithm, model=args.model, data=args.data, output=args.output,
        lr=args.lr if args.lr is not None else ALGORITHMS[args.algorithm].default_lr, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        warmup_ratio=args.warmup_ratio, warmup_steps=args.warmup_steps, scheduler=args.scheduler, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, dtype=args.dtype, device=args.device, gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed, max_length=args.max_length,
        eval_data=args.eval_data, eval_split=args.eval_split, eval_every=args.eval_every, shuffle=not args.no_shuffle,
        group_by_length=not args.no_group_by_length,
        save_every=args.save_every, save_total_limit=args.save_total_limit, resume=args.resume,
        no_reference=args.no_reference, ref_model=args.ref_model, ref_cache_dir=args.ref_cache_dir,
        loss=args.loss, beta=args.beta, label_smoothing=args.label_smoothing, simpo_gamma=args.simpo_gamma,
        dpop_lambda=args.dpop_lambda, desirable_weight=args.desirable_weight,
        undesirable_weight=args.undesirable_weight, rm_center_coef=args.rm_center_coef,
        prm_soft=args.soft, step_separator=_unescape(args.step_sep) if args.step_sep else None, fsdp=args.fsdp, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, logging_every=args.logging_every,
        progress=not args.no_progress, plots=not args.no_plots, threads=args.threads, report_to=args.report_to,
        chat_template=args.chat_template,
    )
    check_config(cfg)
    return cfg


def _unescape(text: str) -> str:
    """`--step-sep '\\n\\n'` typed in a shell -> two newlines."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
