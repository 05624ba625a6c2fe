"""`prefsmith check-gold`: list gold answers the math reward cannot parse, before spending compute on rollouts.

    prefsmith check-gold --input data/math/train.jsonl [--column answer]

Every row whose gold would make the math reward return null (`bad_gold`: unparseable, a number in words, or
a gold whose own check times out or crashes) is printed as `row, id, answer, reason`; the exit status is 1
when there is any, 0 when every gold parses (2 for a usage error such as a missing column). The check is the math reward's own (`rewards.math.check_gold`),
run in its worker pool under the same time limit, so "parses here" means "scores there".
"""
from __future__ import annotations

import argparse
import sys

from pipelines.core.dataset import load_table
from pipelines.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="prompts: JSONL, Parquet, dataset directory or hub name")
    p.add_argument("--column", default="answer", help="column holding the gold answers (default: answer)")
    p.add_argument("--id-column", default="id", help="column printed to identify a row (default: id)")
    p.add_argument("--workers", type=int, default=None, help="worker processes for the check")
    p.add_argument("--timeout", type=float, default=None, help="seconds per gold answer (default: the math reward's)")


def run(args: argparse.Namespace, out=None) -> int:
    from rewards import math as m

    out = out or sys.stdout
    table = load_table(args.input)
    if args.column not in table.column_names:
        raise UserError(f"{args.input}: no column {args.column!r} (columns: {', '.join(table.column_names)}); "
                        "pass the gold-answer column with --column")
    golds = table.column(args.column).to_pylist()
    ids = table.column(args.id_column).to_pylist() if args.id_column in table.column_names else [None] * len(golds)
    kwargs = {"timeout": args.timeout} if args.timeout else {}
    problems = m.check_gold(golds, workers=args.workers, **kwargs)
    for p in problems:
        answer = "null" if golds[p.row] is None else repr(p.gold[:120])
        print(f"row {p.row}\tid {ids[p.row] if ids[p.row] is not None else '-'}\tanswer {answer}\t{p.reason}", file=out)
    print(f"check-gold: {len(golds) - len(problems)}/{len(golds)} gold answers parse; {len(problems)} do not"
          + (" (rows using them would get a null math reward)" if problems else ""), file=out)
    return 1 if problems else 0
