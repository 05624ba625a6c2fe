"""prefsmith's Python API: every command as a function with the command's options as keyword arguments.

    import prefsmith

    rollouts = prefsmith.generate(model="default", input=rows, output="runs/rollouts", n=4)
    labeled = prefsmith.label(input=rollouts.path, output="runs/labeled", reward=["math"])
    pairs = prefsmith.pairs(input=labeled.path, output="runs/pairs")
    policy = prefsmith.train.dpo(model="default", data=pairs.path, output="runs/dpo", max_steps=20)
    report = prefsmith.eval(model=policy.model, prompts="heldout.jsonl", output="runs/eval")
    prefsmith.score(rows, reward=["math"])           # rows in memory, no files
    prefsmith.rewards.get("math")                    # a reward in TRL's signature

How keywords become flags, and rows in memory become inputs: prefsmith/api.py. A walk-through: docs/api.md.
"""
from __future__ import annotations

from prefsmith import rewards, train
from prefsmith.api import (FUNCTIONS, Result, critique_revise, decontaminate, dedup, evaluate, export, generate,
                           judge, kto, label, pairs, prm_label, run, select, stats)
from prefsmith.rewards import score
from prefsmith.train import TrainResult

eval = evaluate  # `prefsmith.eval(...)`, as the command is named (shadows the builtin only inside this package)

__all__ = ["FUNCTIONS", "Result", "TrainResult", "critique_revise", "decontaminate", "dedup", "eval", "evaluate",
           "export", "generate", "judge", "kto", "label", "pairs", "prm_label", "rewards", "run", "score", "select",
           "stats", "train"]
