"""Benchmark: peak memory (RSS) and step time of `prefsmith train grpo` on the embedded model with the defaults,
against the code of another revision (default: 2feec28, the last commit before the shared Learner and chunked
log-probs), and with the memory savers (LoRA, gradient checkpointing), in one run.

    .venv/bin/python bench/grpo_memory.py [--steps 1] [--baseline-rev 2feec28] [--sides base,ours,lora,ckpt]

Every side runs `prefsmith train grpo --model default --prompts data/math/train.jsonl --reward math --max-steps
STEPS --save-every 0 --threads T` (every other option at its default: G = 8, 4 prompts per step, 256 new tokens,
dynamic sampling) in its own process, one after the other, from the same seed, so every side samples the same
completions; `base` runs it from a git worktree of `--baseline-rev`. Peak RSS is the process's VmHWM polled from
/proc; step time is the mean `step_seconds` of metrics.jsonl, split into generation and training.

Sides: base (the baseline revision), ours (this tree), lora (`--lora-r 16 --lora-alpha 32`), ckpt
(`--gradient-checkpointing`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from peak import run_with_peak  # noqa: E402
EXTRA = {"base": [], "ours": [], "lora": ["--lora-r", "16", "--lora-alpha", "32"], "ckpt": ["--gradient-checkpointing"]}


def worktree(rev: str, where: Path) -> Path:
    """A checkout of `rev` (the package is imported from it by PYTHONPATH; the venv is this tree's)."""
    path = where / f"tree-{rev}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev], check=True,
                       capture_output=True)
    return path


def run_side(side: str, tree: Path, args, work: Path) -> dict:
    out = work / side
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "grpo", "--model", "default", "--prompts",
           str(ROOT / "data/math/train.jsonl"), "--reward", "math", "--max-steps", str(args.steps),
           "--save-every", "0", "--output", str(out), "--threads", str(args.threads), *EXTRA[side]]
    env = {**os.environ, "PYTHONPATH": str(tree), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    proc, peak = run_with_peak(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"side {side} failed (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r.get("split") == "train"]
    mean = lambda key: sum(r.get(key, 0.0) for r in train) / len(train)  # noqa: E731
    return {"peak_rss": peak, "wall": time.time() - t0, "step_s": mean("step_seconds"),
            "gen_s": mean("seconds_generation"), "train_s": mean("seconds_training"),
            "sequences": sum(r["sequences"] for r in train), "loss": train[-1].get("loss")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--baseline-rev", default="2feec28")
    ap.add_argument("--sides", default="base,ours,lora,ckpt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="grpo-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "results.json"  # sides measured earlier in this workdir are kept (run sides one at a time)
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    for side in args.sides.split(","):
        tree = worktree(args.baseline_rev, work) if side == "base" else ROOT
        results[side] = run_side(side, tree, args, work)
        print(f"[bench] {side}: {json.dumps(results[side])}", file=sys.stderr, flush=True)
        saved.write_text(json.dumps(results, indent=2))
    print(f"\n{'side':<6} {'peak RSS':>9} {'s/step':>7} {'gen s':>7} {'train s':>8} {'seqs':>5} {'loss':>9}")
    for side, r in results.items():
        print(f"{side:<6} {r['peak_rss'] / 2**30:>8.2f}G {r['step_s']:>7.1f} {r['gen_s']:>7.1f} {r['train_s']:>8.1f} "
              f"{r['sequences']:>5} {r['loss'] if r['loss'] is not None else float('nan'):>9.5f}")
    if "base" in results:
        for side, r in results.items():
            if side != "base":
                print(f"peak RSS {side} / base: {r['peak_rss'] / results['base']['peak_rss']:.2f}; "
                      f"training seconds {side} / base: {r['train_s'] / max(results['base']['train_s'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
