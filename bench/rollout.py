"""Benchmark: multi-turn rollouts with the `python` environment on the hf engine, batched as the engine does now
against one prompt of `prompt_batch_size` rows at a time with every turn sampled alone (how rollouts ran before).

    .venv/bin/python bench/rollout.py [--model DIR] [--prompts 4] [--samples 8] [--turns 3] [--workdir /tmp/rollout-bench]

The policy is the tir recipe's cold-start model (its `cold_start_sft` stage, run into WORKDIR/recipe when `--model`
is not given), so trajectories call python and take several turns. Both sides sample the same
rows (same seeds; printed and checked: token count, turns, tool calls). Printed: seconds, policy tokens/s and the
ratio.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEMPLATE = "{prompt} Reply with the final answer as \\boxed{{ANSWER}}."


def cold_start(work: Path) -> str:
    """The tir recipe's cold-start model, made by the recipe's own stage (skipped when it is already there)."""
    subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(ROOT / "data/pipelines/tir.yaml"), "--set",
                    f"workdir={work / 'recipe'}", "--only", "cold_start_sft"], cwd=ROOT, check=True)
    return str(work / "recipe" / "cold_start_sft" / "model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/rollout-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or cold_start(work)

    import pipelines.engines.hf as hf
    from pipelines.engines import load_engine
    from pipelines.engines.base import SamplingConfig
    from pipelines.envs import load_env
    from pipelines.envs import rollout
    from pipelines.stages.generate import GenerateConfig

    engine = load_engine("hf", model, prompt_batch_size=args.prompts)
    env = load_env("python", {"timeout_s": 5})
    rows = [json.loads(line) for line in (ROOT / "data/math/train.jsonl").read_text().splitlines()[:args.prompts]]
    cfg = GenerateConfig(model=model, template=TEMPLATE, batch_size=args.prompts, env="python", max_turns=args.turns,
                         sampling=SamplingConfig(n=args.samples, temperature=0.7, max_new_tokens=96, seed=1))
    ids = [f"p{i}" for i in range(args.prompts)]
    shared, min_rows = rollout._Rollout.shared_starts, hf.MIN_BATCH_ROWS
    results = {}
    for side in ("before", "ours"):
        if side == "before":  # every turn alone, prompt_batch_size rows per batch
            rollout._Rollout.shared_starts = lambda self, group: [[t] for t in group]
            hf.MIN_BATCH_ROWS = 1
        else:
            rollout._Rollout.shared_starts, hf.MIN_BATCH_ROWS = shared, min_rows
        t0 = time.time()
        out, stats = rollout.rollout_rows(engine, env, rows, cfg, ids, True, args.turns)
        seconds = time.time() - t0
        results[side] = {"seconds": seconds, "tokens": stats["tokens"], "turns": stats.get("turns"),
                         "tool_calls": stats.get("tool_calls"), "ids": [r["completion_ids"] for r in out]}
        print(f"{side:<7} {seconds:6.1f} s  {stats['tokens']} policy tokens  {stats['tokens'] / seconds:5.1f} tok/s  "
              f"turns {stats.get('turns')}  tool calls {stats.get('tool_calls')}", flush=True)
    env.close()
    same = results["before"]["ids"] == results["ours"]["ids"]
    print(f"same rows: {same}; speed-up ours / before: {results['before']['seconds'] / results['ours']['seconds']:.2f}x "
          f"({args.prompts} prompts x {args.samples} trajectories, up to {args.turns} turns, 96 tokens per turn)")


if __name__ == "__main__":
    main()
