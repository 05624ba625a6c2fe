"""`prefsmith train sft|dpo|kto|rm|prm ...` and `prefsmith plot RUN_DIR` (grpo|rloo: trainers/grpo.py;
iterative-dpo|rft: trainers/rounds.py).

Also runnable as `python -m trainers.cli dpo --model M --data D --output O`, which is what
`torchrun --nproc-per-node N -m trainers.cli dpo ...` uses for data-parallel training.
"""
from __future__ import annotations

import argparse
import sys

from pipelines.cli import Parser
from pipelines.errors import UsageError
from trainers.config import TrainConfig


ONLINE = ("grpo", "rloo")  # trainers/grpo.py
ROUNDS = ("iterative-dpo", "rft")  # trainers/rounds.py


def build_parser() -> argparse.ArgumentParser:
    from trainers.algorithms import ALGORITHMS, DPO_LOSSES  # torch: only for `train`, not `plot`

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
    g.add_argument("--scheduler", choices=("cosine", "linear", "constant"), default="cosine")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    g.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, fp32 master weights")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--max-length", type=int, default=1024, help="truncate prompt+completion to N tokens")
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
    g = p.add_argument_group("logging")
    g.add_argument("--logging-every", type=int, default=1, help="write train metrics every N steps")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-plots", action="store_true", help="skip PNG plots at the end")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from trainers.algorithms import ALGORITHMS

    return TrainConfig(
        algorithm=args.algorithm, model=args.model, data=args.data, output=args.output,
        lr=args.lr if args.lr is not None else ALGORITHMS[args.algorithm].default_lr, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        warmup_ratio=args.warmup_ratio, scheduler=args.scheduler, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, dtype=args.dtype, seed=args.seed, max_length=args.max_length,
        eval_data=args.eval_data, eval_split=args.eval_split, eval_every=args.eval_every, shuffle=not args.no_shuffle,
        group_by_length=not args.no_group_by_length,
        save_every=args.save_every, save_total_limit=args.save_total_limit, resume=args.resume,
        no_reference=args.no_reference, ref_model=args.ref_model, ref_cache_dir=args.ref_cache_dir,
        loss=args.loss, beta=args.beta, label_smoothing=args.label_smoothing, simpo_gamma=args.simpo_gamma,
        dpop_lambda=args.dpop_lambda, desirable_weight=args.desirable_weight,
        undesirable_weight=args.undesirable_weight, rm_center_coef=args.rm_center_coef,
        prm_soft=args.soft, step_separator=_unescape(args.step_sep) if args.step_sep else None, fsdp=args.fsdp, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, logging_every=args.logging_every,
        progress=not args.no_progress, plots=not args.no_plots,
    )


def _unescape(text: str) -> str:
    """`--step-sep '\\n\\n'` typed in a shell -> two newlines."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _user_errors() -> tuple[type[Exception], ...]:
    from pipelines.errors import UserError  # UserDataError and EngineError are UserErrors too

    return (UserError, FileNotFoundError)


def check_args(argv: list[str]) -> None:
    """Parse `prefsmith train ...`'s arguments (after `train`) without training: UsageError when they would not
    start (pipeline files are checked whole with this before their first stage runs)."""
    algo, rest = (argv[0], list(argv[1:])) if argv else (None, [])
    if algo in ONLINE:
        from trainers import grpo

        grpo.build_parser(f"prefsmith train {algo}").parse_args(rest)
    elif algo == "ppo":
        from trainers import ppo

        ppo.build_parser().parse_args(rest)
    elif algo in ROUNDS:
        from trainers import rounds_cli

        rounds_cli.parse_args(rest, algo)
    else:
        build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `prefsmith train ...` (argv after `train`). Returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except UsageError as e:  # also under `torchrun -m trainers.cli`, where the prefsmith CLI does not catch it
        print(f"prefsmith train: error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if argv and argv[0] in ONLINE:  # the online loops parse their own options
        from trainers import grpo

        return grpo.main(list(argv[1:]), algo=argv[0])
    if argv and argv[0] == "ppo":  # the online loop with a value model
        from trainers import ppo

        return ppo.main(list(argv[1:]))
    if argv and argv[0] in ROUNDS:  # rounds of sample, label, build, train
        from trainers import rounds_cli

        return rounds_cli.main(list(argv[1:]), recipe=argv[0])
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"prefsmith train: error: {e}", file=sys.stderr)
        return 2
    from trainers.loop import train

    try:
        train(cfg)
    except _user_errors() as e:
        print(f"prefsmith train: error: {e}", file=sys.stderr)
        return 2
    return 0


def plot_parser() -> Parser:
    p = Parser(prog="prefsmith plot", description="Plot a training run's metrics.jsonl.")
    p.add_argument("run_dir", help="a `prefsmith train` output directory")
    return p


def plot_main(argv: list[str] | None = None) -> int:
    """Entry point for `prefsmith plot RUN_DIR`: rewrite RUN_DIR/plots/*.png from metrics.jsonl."""
    args = plot_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from trainers.metrics import plot_run

    try:
        files = plot_run(args.run_dir)
    except FileNotFoundError as e:
        print(f"prefsmith plot: error: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
