"""Benchmark: process-reward labels, `mc` against `binary-search`, and best-of-N with the trained PRM.

    .venv/bin/python bench/prm.py [--model PATH] [--engine hf|vllm] [--prompts 64] [--samples 4] [-k 8]
                                  [--heldout 64] [--n 8] [--workdir runs/bench_prm]

1. Rollouts: `--samples` step-by-step solutions per training prompt (data/math/train.jsonl), blank lines
   between steps, labeled with `math`.
2. Step labels: `prm-label` with both methods on the same rollouts and the same seeds (so a prefix both
   evaluate gets the same K continuations). Printed per method: rollouts and continuation tokens per labeled
   step, prefix evaluations, continuation tokens/s; then their agreement: hard labels per step, the first
   error step per solution, over the solutions both labeled.
3. A PRM (`train prm`, hard labels from mc) on the labeled steps.
4. Best-of-N on held-out prompts (data/math/heldout.jsonl): `--n` samples each, labeled with `math` and the
   PRM (`prm:DIR:min`); accuracy of the PRM's pick (`select --by prm:DIR`), of the majority vote over
   canonical answers (pipelines/reports/evaluate.py), and of a random pick (the mean correctness, exactly),
   with pass@N as the ceiling.

The model defaults to the fetched SmolLM2-135M-Instruct (`prefsmith models fetch-default`). On a CPU this is
slow (the mc method alone samples K continuations for every step of every solution); run it on a GPU with
`--engine vllm`. Every stage is a resumable prefsmith stage under --workdir, so a rerun continues.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.core import dataset as ds  # noqa: E402
from pipelines.engines.base import SamplingConfig  # noqa: E402
from pipelines.reports.evaluate import answer_key, completion_answer, majority_index  # noqa: E402
from pipelines.stages.generate import GenerateConfig, generate  # noqa: E402
from pipelines.stages.label import LabelConfig, label  # noqa: E402
from pipelines.stages.prm_label import PRMLabelConfig, prm_label  # noqa: E402

DEFAULT_MODEL = Path("~/.cache/prefsmith/models/smollm2-135m-instruct").expanduser()
TEMPLATE = ("{prompt}\nSolve it step by step. Put a blank line between steps, and end with "
            "'The answer is \\boxed{{ANSWER}}.'")


def sample(model: str, engine: str, prompts: str, out: Path, n: int, limit: int, seed: int, max_new: int,
           reward: list[str]) -> Path:
    cfg = GenerateConfig(model=model, engine=engine, template=TEMPLATE,
                         sampling=SamplingConfig(n=n, temperature=0.8, max_new_tokens=max_new, seed=seed))
    generate(cfg, prompts, str(out / "rollouts"), limit=limit, progress=False)
    label(str(out / "rollouts"), str(out / "labeled"), LabelConfig(rewards=reward, weights=["prm=0"] if len(reward) > 1 else []),
          progress=False, out=sys.stderr)
    return out / "labeled"


def agreement(mc: list[dict], bs: list[dict]) -> dict:
    """Step-label and first-error agreement over the solutions both methods labeled."""
    bs_by = {r["id"]: r for r in bs}
    both = [(r, bs_by[r["id"]]) for r in mc if r["id"] in bs_by]
    steps = [(a == b) for r, s in both for a, b in zip(r["labels"], s["labels"])]
    first = [r["first_error_step"] == s["first_error_step"] for r, s in both]
    return {"solutions": len(both), "step_agreement": sum(steps) / len(steps) if steps else None,
            "first_error_agreement": sum(first) / len(first) if first else None}


def best_of_n(labeled: list[dict], prm: str, seed: int, n: int) -> dict:
    """Accuracy of the PRM's pick, the majority vote, a random pick (expected) and pass@N, over each prompt's
    first `n` samples (by sample index), so N = 4 and N = 8 come from the same rollouts."""
    groups: dict[str, list[dict]] = {}
    for r in labeled:
        groups.setdefault(r["prompt_id"], []).append(r)
    rng = random.Random(seed)
    picks = {"prm": 0.0, "majority": 0.0, "random (expected)": 0.0, "random (one draw)": 0.0, "pass@n": 0.0}
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: r["sample_idx"])[:n]
        correct = [(r["rewards"] or {}).get("math") == 1.0 for r in rows]
        scores = [(r["rewards"] or {}).get("prm") for r in rows]
        ranked = [i for i in range(len(rows)) if scores[i] is not None]
        if ranked:
            picks["prm"] += correct[max(ranked, key=lambda i: (scores[i], -i))]
        keys = [answer_key(completion_answer(r["completion"], None)) for r in rows]
        winner = majority_index(keys)
        picks["majority"] += correct[0 if winner is None else winner]
        picks["random (expected)"] += sum(correct) / len(correct)
        picks["random (one draw)"] += correct[rng.randrange(len(correct))]
        picks["pass@n"] += any(correct)
    return {k: round(v / len(groups), 4) for k, v in picks.items()} | {"prompts": len(groups), "n": n, "prm_model": prm}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    p.add_argument("--prompts", type=int, default=64, help="training prompts")
    p.add_argument("--samples", type=int, default=4, help="solutions per training prompt")
    p.add_argument("-k", "--rollouts-per-step", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-steps", type=int, default=16)
    p.add_argument("--heldout", type=int, default=64, help="held-out prompts for best-of-N")
    p.add_argument("--n", type=int, default=8, help="samples per held-out prompt")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/bench_prm")
    args = p.parse_args()
    work = Path(args.workdir)
    if not Path(args.model).is_dir():
        sys.exit(f"no model folder at {args.model}: run `prefsmith models fetch-default` or pass --model")

    train_rows = sample(args.model, args.engine, str(ROOT / "data/math/train.jsonl"), work / "train",
                        args.samples, args.prompts, args.seed, args.max_new_tokens, ["math"])
    report: dict = {"model": args.model, "engine": args.engine, "k": args.rollouts_per_step}
    for method in ("mc", "binary-search"):
        cfg = PRMLabelConfig(model=args.model, engine=args.engine, method=method,
                             rollouts_per_step=args.rollouts_per_step, max_new_tokens=args.max_new_tokens,
                             max_steps=args.max_steps, seed=args.seed)
        t0 = time.time()
        prm_label(cfg, str(train_rows), str(work / f"steps_{method}"), progress=False)
        report[method] = {**ds.read_manifest(work / f"steps_{method}")["prm"], "wall_s": round(time.time() - t0, 1)}
    report["agreement"] = agreement(ds.load_rows(work / "steps_mc"), ds.load_rows(work / "steps_binary-search"))

    from trainers.offline.config import TrainConfig
    from trainers.offline.loop import train

    prm_dir = work / "prm"
    if not (prm_dir / "train_result.json").exists():
        train(TrainConfig(algorithm="prm", model=args.model, data=str(work / "steps_mc"), output=str(prm_dir),
                          lr=1e-5, max_steps=args.train_steps, batch_size=8, progress=False))
    report["prm_train"] = json.loads((prm_dir / "train_result.json").read_text())["train"]

    held = sample(args.model, args.engine, str(ROOT / "data/math/heldout.jsonl"), work / "heldout", args.n,
                  args.heldout, args.seed + 1, args.max_new_tokens, ["math", f"prm:{prm_dir}:min"])
    held_rows = ds.load_rows(held)
    report["best_of_n"] = [best_of_n(held_rows, str(prm_dir), args.seed, n)
                           for n in sorted({min(4, args.n), args.n})]

    for method in ("mc", "binary-search"):
        r = report[method]
        print(f"{method:>13}: {r['rollouts_per_labeled_step']} rollouts and {r['tokens_per_labeled_step']} tokens per "
              f"labeled step, {r['prefix_evaluations']} prefix evaluations, {r['tokens_per_s']} tokens/s, "
              f"{r['labeled_steps']} steps labeled in {r['wall_s']} s")
    a = report["agreement"]
    print(f"agreement over {a['solutions']} solutions: steps {a['step_agreement']}, first error {a['first_error_agreement']}")
    for b in report["best_of_n"]:
        print(f"best-of-{b['n']} on {b['prompts']} held-out prompts: PRM {b['prm']}, majority {b['majority']}, "
              f"random {b['random (expected)']} (one draw {b['random (one draw)']}), pass@{b['n']} {b['pass@n']}")
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {work / 'report.json'}")


if __name__ == "__main__":
    main()
