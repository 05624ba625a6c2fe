"""`prefsmith export IN OUT.jsonl`: any readable dataset as JSONL, one row a line."""
from __future__ import annotations

import argparse

from pipelines.core.dataset import export_jsonl


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="JSONL, Parquet file, dataset directory or Hugging Face dataset name")
    p.add_argument("output", help="path of the JSONL file to write")


def run(args: argparse.Namespace) -> int:
    n = export_jsonl(args.input, args.output)
    print(f"wrote {n} rows to {args.output}")
    return 0
