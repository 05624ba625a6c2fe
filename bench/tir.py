"""Benchmark: tool-integrated reasoning on the embedded model. Does the `python` environment help, is it used, and
what do the recipe's cold-start SFT and a short GRPO run with it change? Measured, whatever the numbers are.

    .venv/bin/python bench/tir.py [--limit 60] [--minutes 15] [--workdir /tmp/tir-bench]

Runs the recipe a user runs, `prefsmith run data/pipelines/tir.yaml --set grpo_minutes=MINUTES` (cold-start SFT on
data/tir/tir_traces.jsonl, then `train grpo --env python` with math + 0.2 format:boxed + 0.1 tool_use, every other
option the recipe's), then six greedy evaluations of data/math/heldout.jsonl (first `--limit` prompts, the recipe's
template asking for \\boxed{ANSWER}, the `math` reward on the final turn, 128 new tokens per turn):

    prefsmith eval --model M --input heldout.jsonl --template T                         (no environment)
    prefsmith eval --model M --input heldout.jsonl --template T --env python --max-turns 3

for M = the embedded model (before), the cold-start SFT model and the GRPO policy. Printed: accuracy, tool-call rate
(share of trajectories that ran at least one ```python block), tool-error rate (share of runs that crashed or
timed out), mean turns and how the trajectories ended; JSON to WORKDIR/tir.json, a bar chart to WORKDIR/tir.png.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "{prompt} Reply with the final answer as \\boxed{{ANSWER}}."
HELDOUT = ROOT / "data/math/heldout.jsonl"


def prefsmith(*args: str) -> float:
    """Run one prefsmith command (its output shown as it goes); the seconds it took."""
    t0 = time.time()
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    print("$ prefsmith " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.time() - t0


def evaluate(model: str, out: Path, limit: int, env: str | None, max_turns: int) -> dict:
    args = ["eval", "--model", model, "--input", str(HELDOUT), "--limit", str(limit), "--template", TEMPLATE,
            "--max-new-tokens", "128", "--output", str(out), "--no-plots", "--no-progress"]
    if env:
        args += ["--env", env, "--max-turns", str(max_turns)]
    seconds = prefsmith(*args)
    summary = json.loads((out / "eval.json").read_text())
    tools = summary.get("tools") or {}
    return {"accuracy": summary["overall"]["accuracy"], "seconds": round(seconds, 1),
            **{k: tools.get(k) for k in ("tool_call_rate", "tool_error_rate", "tool_calls", "mean_turns",
                                         "finish_reasons")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/tir-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    prefsmith("run", str(ROOT / "data/pipelines/tir.yaml"), "--set", f"workdir={work / 'recipe'}", "--set",
              f"grpo_minutes={args.minutes:g}", "--set", f"max_turns={args.max_turns}", "--set", f"eval_limit={args.limit}")
    train_s = time.time() - t0
    rl = work / "recipe/tir_rl"
    steps = sum(1 for line in (rl / "metrics.jsonl").read_text().splitlines() if json.loads(line).get("split") == "train")
    results: dict[str, dict] = {}
    for stage, model in (("before", "default"), ("sft", str(work / "recipe/cold_start_sft")), ("grpo", str(rl))):
        for env in (None, "python"):
            name = stage + ("+python" if env else "")
            results[name] = evaluate(model, work / name, args.limit, env, args.max_turns)

    print(f"\nheld-out: first {args.limit} of {HELDOUT.name}, greedy; the recipe (SFT + GRPO --env python, {steps} "
          f"steps, GRPO limit {args.minutes:g} min) took {train_s / 60:.1f} min")
    print(f"{'':<15}{'accuracy':>9}{'tool-call rate':>16}{'tool-error rate':>17}{'mean turns':>12}{'s':>7}  ended")
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    for name, r in results.items():
        print(f"{name:<15}{pct(r['accuracy']):>9}{pct(r['tool_call_rate']):>16}{pct(r['tool_error_rate']):>17}"
              f"{r['mean_turns'] if r['mean_turns'] is not None else '-':>12}{r['seconds']:>7.0f}  "
              f"{r['finish_reasons'] or ''}")
    (work / "tir.json").write_text(json.dumps({"limit": args.limit, "max_turns": args.max_turns, "steps": steps,
                                               "train_minutes": round(train_s / 60, 2), "results": results}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = list(results)
        ax.bar(names, [100 * results[n]["accuracy"] for n in names], color=["#999", "#4a7"] * 3)
        for i, n in enumerate(names):
            rate = results[n]["tool_call_rate"]
            ax.text(i, 100 * results[n]["accuracy"] + 0.5, "" if rate is None else f"tools {100 * rate:.0f}%",
                    ha="center", fontsize=8)
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(f"embedded model: before, cold-start SFT, GRPO {args.minutes:g} min ({steps} steps); +python")
        fig.tight_layout()
        fig.savefig(work / "tir.png", dpi=120)
        print(f"plot: {work / 'tir.png'}")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
