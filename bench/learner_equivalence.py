"""Check: the trainers give the weights of another revision's trainers on the same seeds (default: 2feec28, the last
commit before the shared Learner), on the tiny test model, for GRPO (β > 0, μ = 2, several micro-batches), RLOO
(the `grpo` aggregation, weighted per micro-batch), PPO (policy and value model) and the offline SFT and DPO loops.

    .venv/bin/python bench/learner_equivalence.py [--baseline-rev 2feec28] [--workdir DIR]

Each run is `python -m pipelines.cli train …` in its own process, from a git worktree of the baseline revision
and from this tree; printed: the largest absolute difference of any weight, per run and model, and the largest
difference of any logged metric of the last step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

ONLINE = ["--prompts", "{prompts}", "--reward", "plugin_rewards:first_char_reward", "--max-new-tokens", "6",
          "--lr", "1e-3", "--seed", "3", "--threads", "1", "--save-every", "0", "--micro-batch-size", "3"]
RUNS = {
    "grpo": ["train", "grpo", *ONLINE, "--num-generations", "4", "--prompts-per-step", "2", "--no-dynamic-sampling",
             "--max-steps", "3", "--beta", "0.1", "--num-iterations", "2"],
    "rloo": ["train", "rloo", *ONLINE, "--num-generations", "4", "--prompts-per-step", "2", "--no-dynamic-sampling",
             "--max-steps", "3", "--loss", "grpo"],
    "ppo": ["train", "ppo", *ONLINE, "--prompts-per-step", "4", "--max-steps", "2", "--num-iterations", "2"],
    "sft": ["train", "sft", "--data", "{sft}", "--max-steps", "3", "--batch-size", "4", "--grad-accum", "2",
            "--lr", "1e-3", "--no-progress", "--no-plots"],
    "dpo": ["train", "dpo", "--data", "{dpo}", "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3",
            "--no-progress", "--no-plots", "--ref-cache-dir", "{work}/ref-cache-{tree}"],
}


def data(work: Path) -> dict[str, str]:
    from tiny_model import build_tiny_model

    model = work / "tiny"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    files = {"prompts": work / "prompts.jsonl", "sft": work / "sft.jsonl", "dpo": work / "dpo.jsonl"}
    files["prompts"].write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"say something {i}", "answer": str(i)})
                                        + "\n" for i in range(12)))
    files["sft"].write_text("".join(json.dumps({"prompt": f"say {i}", "completion": f" {i} and {i + 1}"}) + "\n"
                                    for i in range(16)))
    files["dpo"].write_text("".join(json.dumps({"prompt": f"say {i}", "chosen": f" {i}", "rejected": f" no {i}"}) + "\n"
                                    for i in range(16)))
    return {"model": str(model), **{k: str(v) for k, v in files.items()}}


def run(tree: Path, name: str, paths: dict, out: Path, work: Path) -> None:
    args = [a.format(**paths, work=work, tree=tree.name) for a in RUNS[name]]
    cmd = [sys.executable, "-m", "pipelines.cli", *args, "--model", paths["model"], "--output", str(out)]
    # one thread on both sides: a different thread count sums matmuls in another order (last-bit differences)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} in {tree} failed: {proc.stderr[-2000:]}")


def final_model(out: Path, name: str, sub: str) -> Path:
    """OUTPUT/<sub> (where every trainer saves now), else OUTPUT itself (an offline run of an older baseline)."""
    return out / sub if (out / sub / "config.json").exists() else out


def main() -> None:
    from safetensors.torch import load_file

    from grpo_memory import worktree

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-rev", default="2feec28")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="learner-equivalence-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = data(work)
    trees = {"base": worktree(args.baseline_rev, work), "ours": ROOT}
    print(f"{'run':<6} {'model':<12} {'max |weight diff|':>18} {'max |metric diff|':>18}")
    worst = 0.0
    for name in RUNS:
        for side, tree in trees.items():
            run(tree, name, paths, work / side / name, work)
        for sub in (["model", "value_model"] if name == "ppo" else ["model"]):
            a = load_file(final_model(work / "base" / name, name, sub) / "model.safetensors")
            b = load_file(final_model(work / "ours" / name, name, sub) / "model.safetensors")
            diff = max(float((a[k] - b[k]).abs().max()) for k in a)
            last = [[json.loads(x) for x in (work / s / name / "metrics.jsonl").read_text().splitlines()
                     if json.loads(x).get("split") == "train"][-1] for s in trees]
            keys = [k for k, v in last[0].items() if isinstance(v, float) and isinstance(last[1].get(k), float)
                    and not any(t in k for t in ("second", "minutes", "time", "per_s"))]
            mdiff = max((abs(last[0][k] - last[1][k]) for k in keys), default=0.0)
            worst = max(worst, diff)
            print(f"{name:<6} {sub:<12} {diff:>18.3g} {mdiff:>18.3g}")
    print(f"\nlargest weight difference: {worst:.3g} ({'within' if worst <= 1e-6 else 'OVER'} 1e-6)")


if __name__ == "__main__":
    main()
