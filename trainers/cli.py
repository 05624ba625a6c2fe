"""`prefsmith train ALGO ...` (`TRAINERS`; sft|dpo|kto|rm|prm options: trainers/offline/cli.py) and `prefsmith plot RUN_DIR`
(grpo|rloo: trainers/online/grpo.py; ppo: trainers/online/ppo.py; iterative-dpo|rft: trainers/rounds/cli.py).

Also runnable as `python -m trainers.cli dpo --model M --data D --output O`, which is what
`torchrun --nproc-per-node N -m trainers.cli dpo ...` uses for data-parallel training.
"""
from __future__ import annotations

import os
import sys

from pipelines.cli import Parser
from pipelines.errors import UsageError
from trainers.offline.cli import build_parser, config_from_args  # callers and tests import them from here too


ONLINE = ("grpo", "rloo")  # trainers/online/grpo.py
ROUNDS = ("iterative-dpo", "rft")  # trainers/rounds/driver.py

# every `prefsmith train` algorithm and recipe -> one line for `prefsmith train --help`
TRAINERS: dict[str, str] = {
    "sft": "supervised fine-tuning on prompt/completion or messages rows",
    "dpo": "preference optimisation on chosen/rejected pairs (DPO; IPO, SimPO, ORPO, DPOP... via --loss)",
    "kto": "KTO on rows labeled desirable or undesirable",
    "rm": "a Bradley-Terry reward model from preference pairs",
    "prm": "a process reward model from step labels (prm-label)",
    "grpo": "online RL from the policy's own rollouts: GRPO, DAPO, Dr. GRPO, GSPO, CISPO, ReMax (--advantage, --loss)",
    "rloo": "online RL with the leave-one-out baseline (grpo with --advantage rloo)",
    "ppo": "online RL with a learned value model (PPO with GAE)",
    "iterative-dpo": "recipe: rounds of sample, label, dedup, pair and train DPO on the current policy",
    "rft": "recipe: rejection-sampling fine-tuning, rounds of sample, keep the correct and train SFT",
}


def train_help() -> str:
    """`prefsmith train --help`: every algorithm and recipe, one line each."""
    width = max(map(len, TRAINERS)) + 2
    return ("usage: prefsmith train ALGO [options]   (options: `prefsmith train ALGO --help`)\n\n"
            "Train a model. ALGO is one of:\n"
            + "".join(f"  {name:<{width}}{line}\n" for name, line in TRAINERS.items())
            + "\nEvery ALGO also takes --config FILE.yaml (keys: its flags' names; flags given override it); "
              "docs/training.md, docs/online_rl.md, docs/recipes.md, docs/cli.md.\n")


def _user_errors() -> tuple[type[Exception], ...]:
    from pipelines.errors import UserError  # UserDataError and EngineError are UserErrors too

    return (UserError, FileNotFoundError)


def check_args(argv: list[str]) -> None:
    """Parse `prefsmith train ...`'s arguments (after `train`) without training: UsageError when they would not
    start (pipeline files are checked whole with this before their first stage runs), UserError when
    --push-to-hub could not upload."""
    from pipelines.core import hub

    _parse(hub.split_argv(list(argv))[0])


def _parse(argv: list[str]):
    """The parsed arguments of `prefsmith train ALGO ...` (the rounds' own ones for a recipe)."""
    algo, rest = (argv[0], list(argv[1:])) if argv else (None, [])
    if algo in ONLINE:
        from trainers.online import grpo

        return grpo.build_parser(f"prefsmith train {algo}").parse_args(rest)
    if algo == "ppo":
        from trainers.online import ppo

        return ppo.build_parser().parse_args(rest)
    if algo in ROUNDS:
        from trainers.rounds import cli as rounds_cli

        return rounds_cli.parse_args(rest, algo)[0]
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `prefsmith train ...` (argv after `train`). Returns the exit status. With `--push-to-hub
    REPO` (checked before training), the final model folder and its card are uploaded when training succeeded."""
    from pipelines.core import hub
    from pipelines.errors import UserError

    argv = sys.argv[1:] if argv is None else argv
    try:
        argv, target = hub.split_argv(list(argv))
        status = _main(argv)
        if target is not None and status == 0 and int(os.environ.get("RANK", "0")) == 0:
            from trainers.core.card import final_model_dir

            hub.push(final_model_dir(_parse(argv).output), target, "model",
                     rerun="rerun the same command with --resume")
        return status
    except (UsageError, UserError) as e:  # also under `torchrun -m trainers.cli`, where the prefsmith CLI does not catch it
        print(f"prefsmith train: error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(train_help(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv and argv[0] in ONLINE:  # the online loops parse their own options
        from trainers.online import grpo

        return grpo.main(list(argv[1:]), algo=argv[0])
    if argv and argv[0] == "ppo":  # the online loop with a value model
        from trainers.online import ppo

        return ppo.main(list(argv[1:]))
    if argv and argv[0] in ROUNDS:  # rounds of sample, label, build, train
        from trainers.rounds import cli as rounds_cli

        return rounds_cli.main(list(argv[1:]), recipe=argv[0])
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"prefsmith train: error: {e}", file=sys.stderr)
        return 2
    from trainers.offline.loop import train

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
    from trainers.core.metrics import plot_run

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
