"""`prefsmith train iterative-dpo|rft ...`: the rounds recipes' command line (trainers/rounds/driver.py runs them).

The round's own options are parsed here; every other option is the per-round training run's and is parsed by
`prefsmith train dpo|sft`'s own parser (trainers/offline/cli.py), so `--lr`, `--epochs`, `--batch-size`, `--beta`,
`--loss`, `--lora-r`... mean exactly what they mean there.
"""
from __future__ import annotations

import argparse
import sys

from pipelines.cli import Parser
from pipelines.core import hub
from pipelines.errors import UserError

# flags of `prefsmith train` the rounds driver sets itself, per round
_SET_PER_ROUND = ("--data", "--resume", "--ref-model", "--eval-data", "--eval-split")
# rounds defaults that differ from `prefsmith train`'s: a killed round's training resumes from a checkpoint
_TRAIN_DEFAULTS = {"save_every": 50}


def build_parser(recipe: str) -> argparse.ArgumentParser:
    from trainers.rounds.driver import RoundsConfig

    d = RoundsConfig.__dataclass_fields__
    algo = "dpo" if recipe == "iterative-dpo" else "sft"
    p = Parser(
        prog=f"prefsmith train {recipe}",
        description="Iterative on-policy DPO: each round samples with the current policy, labels, dedups, pairs "
                    "and trains DPO." if recipe == "iterative-dpo" else
                    "Rejection-sampling fine-tuning / expert iteration: each round samples with the current policy, "
                    "keeps the correct completions, accumulates them and trains SFT.",
        epilog=f"Every other option is `prefsmith train {algo}`'s (see `prefsmith train {algo} --help`): --lr, "
               "--epochs, --batch-size, --max-steps, --seed, --save-every (default 50 here), ... "
               "Layout, resume and defaults: docs/recipes.md.")
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--model", required=True, help="the initial policy: `default` or a local model directory")
    g.add_argument("--prompts", required=True, help="prompts with the rewards' gold columns (e.g. answer)")
    g.add_argument("--output", required=True, help="run directory: round-NNN/, rounds.jsonl, rounds.png")
    g.add_argument("--rounds", type=int, default=d["rounds"].default, help="rounds to run (a rerun may raise it)")
    g.add_argument("--overwrite", action="store_true", help="replace a run made with other settings")
    g.add_argument("--ref-cache-dir", default=None, help="where cached reference log-probs live")
    g = p.add_argument_group("sampling (the generate stage)")
    g.add_argument("--n", type=int, default=d["n"].default, help="completions per prompt")
    g.add_argument("--prompts-per-round", type=int, default=None,
                   help="a seeded slice of this many prompts per round, a new one each round (default: all)")
    for name, kind in (("temperature", float), ("top_p", float), ("max_new_tokens", int)):
        g.add_argument("--" + name.replace("_", "-"), type=kind, default=d[name].default)  # help: COMMON_HELP
    g.add_argument("--gen-batch-size", type=int, default=d["gen_batch_size"].default, help="prompts per engine call")
    g.add_argument("--template", default=None, help="format string for string prompts, e.g. '{prompt} ...'")
    g.add_argument("--system", default=None)
    g.add_argument("--chat", choices=["auto", "always", "never"], default="auto")
    g.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    g.add_argument("--prompt-column", default=d["prompt_column"].default)
    g.add_argument("--gold-column", default=d["gold_column"].default)
    g = p.add_argument_group("labels and cleaning")
    g.add_argument("--reward", action="append", required=True, dest="rewards", help="as in `prefsmith label`")
    g.add_argument("--weight", action="append", default=[], dest="weights", metavar="NAME=W")
    g.add_argument("--dedup-field", default=d["dedup_field"].default,
                   help="what makes two samples the same, against every earlier round (dedup --field)")
    g.add_argument("--dedup-threshold", type=float, default=d["dedup_threshold"].default,
                   help="MinHash Jaccard similarity at or above which two samples are near-duplicates")
    g.add_argument("--decontaminate-against", action="append", default=[], metavar="EVAL",
                   help="remove rows whose prompt overlaps this eval set (decontaminate --against; repeatable)")
    g.add_argument("--decontaminate-ngram", type=int, default=d["decontaminate_ngram"].default,
                   help="n of the word n-grams a prompt may not share with an eval set")
    g = p.add_argument_group("the training set")
    if recipe == "iterative-dpo":
        g.add_argument("--strategy", choices=["best-worst", "all", "random"], default=d["strategy"].default,
                       help="pairs --strategy (default best-worst: RLHFlow's highest vs lowest reward)")
        g.add_argument("--min-margin", type=float, default=d["min_margin"].default,
                       help="pairs --min-margin: the least reward gap between chosen and rejected")
        g.add_argument("--ref", choices=["initial", "previous"], default=d["ref"].default,
                       help="DPO reference: the initial model (default, RLHFlow) or the previous round's policy")
    else:
        g.add_argument("--keep", choices=["best", "all-correct"], default=d["keep"].default,
                       help="select --keep (default all-correct: every distinct correct completion)")
        g.add_argument("--min-reward", type=float, default=d["min_reward"].default, help="correct: reward >= this")
    g.add_argument("--from", dest="start", choices=["initial", "previous"], default=None,
                   help="each round trains from the initial model or the previous round's "
                        f"(default {'previous' if recipe == 'iterative-dpo' else 'initial'})")
    g = p.add_argument_group("evaluation (greedy, after every round and of the initial model)")
    g.add_argument("--eval-prompts", action="append", default=[], help="held-out prompts (repeat for several sets)")
    g.add_argument("--eval-max-new-tokens", type=int, default=None, help="default: --max-new-tokens")
    g.add_argument("--eval-batch-size", type=int, default=d["eval_batch_size"].default,
                   help="prompts per greedy generate call of the evaluations")
    g.add_argument("--eval-limit", type=int, default=None, help="only the first N prompts of each set")
    hub.add_arguments(p, command_line_only=True)  # `prefsmith train` takes them off the command line (trainers/cli.py)
    return p


def parse_args(argv: list[str], recipe: str) -> tuple[argparse.Namespace, argparse.Namespace]:
    """argv -> (the rounds' own options, the per-round training run's), parsed but not yet checked as a config."""
    from trainers.offline.cli import build_parser as train_parser
    from trainers.rounds.driver import RECIPES

    own = build_parser(recipe)
    own.config_passthrough = True  # a --config file holds both parsers' keys: the training run's go on to it
    args, rest = own.parse_known_args(argv)
    for flag in _SET_PER_ROUND:
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            raise UserError(f"{flag} is set by each round (see docs/recipes.md); leave it out")
    tp = train_parser()
    tp.prog, tp.also_known = f"prefsmith train {recipe}", list(own._option_string_actions)
    tp.set_defaults(**_TRAIN_DEFAULTS)
    targs = tp.parse_args([RECIPES[recipe].algorithm, "--model", args.model, "--data", "-", "--output", "-", *rest])
    return args, targs


def parse(argv: list[str], recipe: str):
    """argv -> RoundsConfig; the options this parser does not know go to `prefsmith train dpo|sft`'s."""
    from pipelines.engines.models import resolve_model
    from trainers.offline.cli import config_from_args
    from trainers.rounds.driver import RoundsConfig

    args, targs = parse_args(argv, recipe)
    targs.ref_cache_dir = args.ref_cache_dir
    try:
        train = config_from_args(targs)
    except ValueError as e:
        raise UserError(str(e)) from None
    own = {k: v for k, v in vars(args).items() if k != "ref_cache_dir"}
    own["model"] = resolve_model(own["model"])
    train.model = own["model"]
    return RoundsConfig(recipe=recipe, train=train, seed=train.seed, progress=train.progress, **own)


def main(argv: list[str], recipe: str) -> int:
    from trainers.rounds.driver import run_rounds

    try:
        run_rounds(parse(argv, recipe))
    except (UserError, FileNotFoundError) as e:
        print(f"prefsmith train {recipe}: error: {e}", file=sys.stderr)
        return 2
    return 0
