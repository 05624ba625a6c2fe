"""`prefsmith train sft|dpo|kto|rm|prm ...` (options: trainers/offline/cli.py) and `prefsmith plot RUN_DIR`
(grpo|rloo: trainers/online/grpo.py; ppo: trainers/online/ppo.py; iterative-dpo|rft: trainers/rounds/cli.py).

Also runnable as `python -m trainers.cli dpo --model M --data D --output O`, which is what
`torchrun --nproc-per-node N -m trainers.cli dpo ...` uses for data-parallel training.
"""
from __future__ import annotations

import sys

from pipelines.cli import Parser
from pipelines.errors import UsageError
from trainers.offline.cli import build_parser, config_from_args  # callers and tests import them from here too


ONLINE = ("grpo", "rloo")  # trainers/online/grpo.py
ROUNDS = ("iterative-dpo", "rft")  # trainers/rounds/driver.py


def _user_errors() -> tuple[type[Exception], ...]:
    from pipelines.errors import UserError  # UserDataError and EngineError are UserErrors too

    return (UserError, FileNotFoundError)


def check_args(argv: list[str]) -> None:
    """Parse `prefsmith train ...`'s arguments (after `train`) without training: UsageError when they would not
    start (pipeline files are checked whole with this before their first stage runs)."""
    algo, rest = (argv[0], list(argv[1:])) if argv else (None, [])
    if algo in ONLINE:
        from trainers.online import grpo

        grpo.build_parser(f"prefsmith train {algo}").parse_args(rest)
    elif algo == "ppo":
        from trainers.online import ppo

        ppo.build_parser().parse_args(rest)
    elif algo in ROUNDS:
        from trainers.rounds import cli as rounds_cli

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
