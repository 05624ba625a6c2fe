"""The label stage over many rows, local executor vs Ray executor on the same machine and the same CPUs.

    .venv/bin/python bench/ray.py                       # 100,000 rows, math + format:think, 2 CPUs each side
    .venv/bin/python bench/ray.py --rows 20000 --cpus 2 --shard-size 2048

Both sides run `prefsmith label` on the same generated rollouts (math word-problem answers, boxed or not, right
or wrong, with and without a think block): local with `--workers CPUS` (one math worker pool of CPUS processes),
Ray with CPUS replicas of 1 CPU each (each replica its own pool of one worker), on a local Ray of CPUS CPUs that is
started before the clock starts. It prints rows/s for each, the overhead ratio (local rows/s over Ray rows/s), and
checks that the two outputs hold identical rows.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

# this file is named like the package it measures: take its folder off the path so `import ray` finds Ray
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        gold = a * b
        shown = gold if rng.random() < 0.4 else gold + rng.choice([-10, -1, 1, 7, 100])
        answer = rng.choice([f"\\boxed{{{shown}}}", f"The answer is {shown}.", f"\\boxed{{{shown / 1:.1f}}}",
                             f"so it is $\\frac{{{shown * 2}}}{{2}}$", "I do not know."])
        think = "<think>multiply the two numbers</think>\n" if rng.random() < 0.5 else ""
        rows.append({"id": f"r{i:07d}", "prompt_id": f"p{i // 8:06d}", "sample_idx": i % 8,
                     "prompt": f"What is {a} times {b}?", "completion": f"{think}{a} times {b}: {answer}",
                     "answer": str(gold)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    from pipelines.core import dataset as ds
    from pipelines.stages.label import LabelConfig, label

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ray-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "rollouts.jsonl"
    if not src.exists():
        src.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.rows)))
    rewards = ["math", "format:think"]
    sink = open(os.devnull, "w")

    def run(out: str, executor, workers: int | None) -> float:
        cfg = LabelConfig(rewards=rewards, workers=workers, shard_size=args.shard_size, batch_size=256)
        t0 = time.perf_counter()
        label(str(src), out, cfg, overwrite=True, progress=False, out=sink, executor=executor)
        return time.perf_counter() - t0

    local_s = run(str(work / "local"), "local", args.cpus)

    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    ray_start = time.perf_counter() - t0
    from pipelines.executors.ray import RayExecutor

    ray_s = run(str(work / "ray"), RayExecutor(workers=args.cpus, num_cpus=1), None)
    ray.shutdown()

    same = ds.load_table(work / "local").equals(ds.load_table(work / "ray"))
    n = args.rows
    print(f"label {'+'.join(rewards)} over {n:,} rows, shard size {args.shard_size}, {args.cpus} CPUs each side")
    print(f"{'executor':<10} {'seconds':>9} {'rows/s':>9}")
    print(f"{'local':<10} {local_s:>9.1f} {n / local_s:>9.0f}   (one math pool of {args.cpus} workers)")
    print(f"{'ray':<10} {ray_s:>9.1f} {n / ray_s:>9.0f}   ({args.cpus} replicas x 1 CPU; Ray itself started in "
          f"{ray_start:.1f}s, not counted)")
    print(f"overhead ratio (local rows/s / ray rows/s): {ray_s / local_s:.2f}")
    print(f"identical output rows: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
