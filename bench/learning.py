"""Benchmark: does the policy get better, and how fast? `prefsmith train grpo` against TRL's GRPOTrainer on the
same model, prompts, rewards and wall-clock budget, in one run.

    .venv/bin/python bench/learning.py [--minutes 30] [--sides ours,trl,trl-tuned] [--eval-limit 60] \
        [--eval-every 10] [--workdir /tmp/learning-bench]

Every side trains the embedded default model (SmolLM2-135M-Instruct) on data/math/train.jsonl with the rewards
`math` + 0.2 x `format:boxed` and the same prompt template, for `--minutes` of *training* wall clock; every
`--eval-every` minutes the clock stops and the policy's greedy accuracy is measured on the first `--eval-limit`
prompts of data/math/heldout.jsonl (the training phrasings, other numbers, no shared 13-gram),
data/math/heldout_alt.jsonl (other sentence shapes) and data/math/heldout_phrasings.jsonl (phrasings training never
uses), with one evaluator for all sides (trainers.online.grpo.Evaluator: the same prompts and template, rendering,
greedy decoding, reward and max tokens). The template asks for `\boxed{ANSWER}` and the `math` reward counts only
a boxed answer then (format as asked, rewards/math.py). Each side runs in its own process, one after the other; peak RSS is that
process's VmHWM, polled from /proc.

Sides:
  ours        prefsmith's defaults (G = 8, 4 prompts per step, lr 1e-5, temperature 0.7, dapo loss, β = 0, dynamic
              sampling, no std scaling) with the bench's template and 128 new tokens; `--reward math` alone, so
              the trainer adds format:boxed at 0.2 and dynamic sampling tests the total reward
  trl         TRL 1.16 GRPOTrainer with its own defaults where we do not set the task (lr 1e-6, temperature 1.0,
              one prompt x 8 generations per step, linear decay, gradient checkpointing)
  ours-lora   ours with LoRA adapters (rank 16, alpha 32, all linear layers) at lr 2e-4, the reference being the base
              with adapters off: LoRA's held-out accuracy and peak memory against full GRPO
  ours-async  ours with `--max-staleness 1`: a generation process one update ahead (one thread each on 2 cores);
              the report prints trained samples per training minute against ours, and held-out accuracy at equal
              samples
  defaults    `train grpo --model default --prompts data/math/train.jsonl --reward math` and nothing else (the
              template auto, 256 new tokens): the report prints its held-out gain, counted as the evaluator's
              template asks (in a box)
  ours-rloo   ours with `--advantage rloo` (leave-one-out baseline)
  ours-remax  ours with `--advantage remax` (one greedy sample per prompt as the baseline): beside ours (GRPO)
              and ours-rloo, the report prints each one's final accuracy, s/step and ReMax's greedy seconds
  trl-tuned   TRL with our hyperparameters (4 x 8 per step, lr 1e-5, temperature 0.7, constant lr, dapo loss, no
              std scaling, no gradient checkpointing, a static KV cache for generation): the best setting we found
              for it (TRL has no dynamic sampling)

Printed: each side's curve (training minutes -> held-out accuracy on both sets), steps, s/step, generated
tokens/s, peak RSS; then the ratios the floor asks for. A PNG of the curves goes to WORKDIR/learning.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

TEMPLATE = "{prompt} Reply with the final answer as \\boxed{{ANSWER}}."
REWARDS, WEIGHTS = ["math", "format:boxed"], ["format=0.2"]
MAX_NEW = 128


SETS = ("heldout", "heldout_alt", "heldout_phrasings")


def eval_sets(limit: int) -> dict[str, list[dict]]:
    from pipelines.core import dataset as ds

    return {name: ds.load_rows(ROOT / "data" / "math" / f"{name}.jsonl")[:limit]
            for name in SETS}


def make_evaluator(model, tokenizer):
    from pipelines.engines.hf import HFEngine
    from pipelines.stages.generate import GenerateConfig
    from pipelines.stages.label import LabelConfig, load_rewards
    from trainers.online.grpo import Evaluator

    fns, names, weights = load_rewards(LabelConfig(rewards=list(REWARDS), weights=list(WEIGHTS)))
    engine = HFEngine.wrap(model, tokenizer, device="cpu", prompt_batch_size=64)
    gen = GenerateConfig(model="policy", template=TEMPLATE)
    return Evaluator(engine, gen, True, fns, names, weights, "math", batch_size=64, max_new_tokens=MAX_NEW)


class Clock:
    """Training minutes: wall clock minus the time spent evaluating."""

    def __init__(self) -> None:
        self.t0, self.paused = time.time(), 0.0

    def minutes(self) -> float:
        return (time.time() - self.t0 - self.paused) / 60


def curve_point(evaluator, sets, clock: Clock, step: int) -> dict:
    t = time.time()
    rec = evaluator.evaluate(sets)
    clock.paused += time.time() - t
    point = {"minutes": round(clock.minutes(), 2), "step": step,
             **{k: rec[f"accuracy_{k}"] for k in sets}, "eval_seconds": round(time.time() - t, 1)}
    print(f"[bench] {json.dumps(point)}", file=sys.stderr, flush=True)
    return point


# ------------------------------------------------------------------------------------------ sides (children)
LORA = {"lora_r": 16, "lora_alpha": 32, "lr": 2e-4}  # the ours-lora side: rank 16, α 2r, lr 20x the full default
ASYNC = {"max_staleness": 1}  # the ours-async side: a generation process one update ahead (1 thread each here)
ADVANTAGE = {"ours-rloo": {"advantage": "rloo"}, "ours-remax": {"advantage": "remax"}}  # ours with another baseline


def run_ours(args, out: Path, side: str = "ours") -> dict:
    from trainers.online.grpo import GRPOConfig, GRPORun
    from pipelines.engines.models import resolve_model

    common = dict(model=resolve_model("default"), prompts=str(ROOT / "data/math/train.jsonl"), output=str(out),
                  save_every=0, max_steps=10**6)
    if side == "defaults":  # `train grpo --model default --prompts data/math/train.jsonl --reward math`, nothing else
        cfg = GRPOConfig(**common, rewards=["math"])
    else:
        # `math` alone: the trainer adds format:boxed at 0.2 itself (the template asks for a box) and dynamic sampling
        # then tests the total; with math + format given by hand it would test `math`, which the embedded model
        # almost never gets right in a box at first (docs/online_rl.md, Defaults)
        cfg = GRPOConfig(**common, rewards=["math"], template=TEMPLATE,
                         max_new_tokens=MAX_NEW, **(LORA if side == "ours-lora" else {}),
                         **(ASYNC if side == "ours-async" else {}), **ADVANTAGE.get(side, {}))
    run = GRPORun(cfg)
    run.setup()
    sets = eval_sets(args.eval_limit)
    evaluator = make_evaluator(run.model, run.tokenizer)
    clock = Clock()
    curve, tokens, gen_s, step_s = [{**curve_point(evaluator, sets, clock, 0), "samples": 0}], 0, 0.0, []
    clock.t0, clock.paused = time.time(), 0.0
    mark = args.eval_every
    samples, greedy_s = 0, 0.0
    if run.worker is not None:
        run.worker.ask_ahead(run.state.step)
    while clock.minutes() < args.minutes:
        rec = run.step()
        samples += rec["sequences"]
        tokens += rec["tokens_per_s"] * rec["seconds_generation"]
        gen_s += rec["seconds_generation"]
        greedy_s += rec.get("seconds_greedy", 0.0)
        step_s.append(rec["step_seconds"])
        if clock.minutes() >= mark or clock.minutes() >= args.minutes:
            curve.append({**curve_point(evaluator, sets, clock, run.state.step), "samples": samples})
            mark += args.eval_every
    run.close_worker()
    return {"curve": curve, "steps": run.state.step, "s_per_step": sum(step_s) / max(1, len(step_s)),
            "tokens_per_s": tokens / gen_s if gen_s else 0.0, "completion_tokens": tokens,
            "trained_samples": samples, "samples_per_min": samples / max(clock.minutes(), 1e-9),
            "greedy_seconds": greedy_s}


def run_trl(args, out: Path, tuned: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from pipelines.core import dataset as ds
    from pipelines.engines.models import resolve_model
    from rewards import math_reward
    from rewards.format import boxed_format_reward

    path = resolve_model("default")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = ds.load_rows(ROOT / "data/math/train.jsonl")
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": TEMPLATE.format(prompt=r["prompt"])}],
                               "answer": r["answer"]} for r in rows])
    common = dict(output_dir=str(out), report_to="none", use_cpu=True, bf16=False, save_strategy="no",
                  logging_steps=1, max_steps=10**5, num_generations=8, max_completion_length=MAX_NEW,
                  reward_weights=[1.0, 0.2], beta=0.0, seed=0, dataloader_num_workers=0)
    if tuned:
        cfg = GRPOConfig(**common, per_device_train_batch_size=32, learning_rate=1e-5, temperature=0.7,
                         lr_scheduler_type="constant", gradient_checkpointing=False, loss_type="dapo", scale_rewards="none",
                         cache_implementation="static")
    else:
        cfg = GRPOConfig(**common)
    sets = eval_sets(args.eval_limit)
    evaluator = make_evaluator(model, tokenizer)
    clock = Clock()
    curve: list[dict] = []
    steps: list[float] = []

    class Budget(TrainerCallback):
        def __init__(self) -> None:
            self.mark, self.last = args.eval_every, time.time()

        def on_step_end(self, targs, state, control, **kw):
            now = time.time()
            steps.append(now - self.last)
            m = clock.minutes()
            if m >= self.mark or m >= args.minutes:
                was = model.training
                curve.append(curve_point(evaluator, sets, clock, state.global_step))
                model.train(was)
                self.mark += args.eval_every
            if clock.minutes() >= args.minutes:
                control.should_training_stop = True
            self.last = time.time()
            return control

    trainer = GRPOTrainer(model=model, reward_funcs=[math_reward, boxed_format_reward], args=cfg,
                          train_dataset=data, processing_class=tokenizer, callbacks=[Budget()])
    curve.append(curve_point(evaluator, sets, clock, 0))
    clock.t0, clock.paused = time.time(), 0.0  # the clock starts with training (set-up excluded, as for ours)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    gen_tokens = sum(h["completions/mean_length"] for h in logs) * cfg.per_device_train_batch_size
    return {"curve": curve, "steps": trainer.state.global_step, "s_per_step": sum(steps) / max(1, len(steps)),
            "tokens_per_s": None, "completion_tokens": gen_tokens}


def child(args) -> None:
    out = Path(args.workdir) / args.child
    out.mkdir(parents=True, exist_ok=True)
    if args.child.startswith("ours") or args.child == "defaults":
        result = run_ours(args, out / "run", args.child)
    else:
        result = run_trl(args, out / "run", args.child == "trl-tuned")
    (out / "result.json").write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------------------------------ parent
def run_side(side: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--minutes", str(args.minutes), "--eval-limit",
           str(args.eval_limit), "--eval-every", str(args.eval_every), "--workdir", args.workdir]
    from peak import run_with_peak

    t0 = time.time()
    proc, peak = run_with_peak(cmd, poll_s=0.5, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise SystemExit(f"side {side} failed (exit {proc.returncode})")
    result = json.loads((Path(args.workdir) / side / "result.json").read_text())
    result.update(peak_rss=peak, wall=time.time() - t0)
    return result


def report(results: dict) -> None:
    """The side-by-side table and the floor's ratios. Generation tokens/s is ours alone (TRL does not time its
    generation apart); completion tokens per training second (every sampled token over the summed step times)
    is measured the same way on every side."""
    print(f"\n{'side':<10} {'steps':>6} {'s/step':>7} {'gen tok/s':>9} {'tok/train-s':>11} {'peak RSS':>9}   "
          "curve (minutes: " + " / ".join(SETS) + ")")
    for side, r in results.items():
        curve = "  ".join(f"{p['minutes']:.0f}: " + "/".join(f"{p[k]:.3f}" for k in SETS if k in p) for p in r["curve"])
        tps = f"{r['tokens_per_s']:.1f}" if r.get("tokens_per_s") else "-"
        train_s = r["steps"] * r["s_per_step"]
        per_train_s = f"{r['completion_tokens'] / train_s:.1f}" if r.get("completion_tokens") and train_s else "-"
        print(f"{side:<10} {r['steps']:>6} {r['s_per_step']:>7.1f} {tps:>9} {per_train_s:>11} "
              f"{r['peak_rss'] / 2**30:>8.2f}G   {curve}")
    if "defaults" in results:
        d = results["defaults"]["curve"]
        print("\ndefaults only (`train grpo --reward math`), held-out gain, format as asked: " + ", ".join(
            f"{k} {d[0][k]:.3f} -> {d[-1][k]:.3f} ({100 * (d[-1][k] - d[0][k]):+.1f} points)" for k in SETS if k in d[0]))
    if "ours" in results and "ours-async" in results:
        sync, asy = results["ours"], results["ours-async"]
        print(f"\nasync (max staleness 1) against the synchronous loop: {asy['samples_per_min']:.1f} vs "
              f"{sync['samples_per_min']:.1f} trained samples per training minute = "
              f"{asy['samples_per_min'] / sync['samples_per_min']:.2f}x")
        for p in asy["curve"][1:]:  # held-out accuracy at equal samples: the synchronous curve interpolated
            q = [c for c in sync["curve"] if c.get("samples") is not None]
            below = max((c for c in q if c["samples"] <= p["samples"]), key=lambda c: c["samples"], default=None)
            above = min((c for c in q if c["samples"] >= p["samples"]), key=lambda c: c["samples"], default=None)
            if below is None or above is None:
                continue
            f = 0.0 if above["samples"] == below["samples"] else (p["samples"] - below["samples"]) / (above["samples"] - below["samples"])
            print(f"  at {p['samples']} samples: async " + ", ".join(
                f"{k} {p[k]:.3f} vs sync {below[k] + f * (above[k] - below[k]):.3f}" for k in SETS if k in p))
    baselines = [s for s in ("ours", "ours-rloo", "ours-remax") if s in results]
    if len(baselines) > 1:
        print("\nadvantage baselines (grpo = ours): " + "; ".join(
            f"{s}: final " + "/".join(f"{results[s]['curve'][-1][k]:.3f}" for k in SETS)
            + f", {results[s]['s_per_step']:.1f} s/step"
            + (f", greedy baseline {results[s]['greedy_seconds'] / max(1, results[s]['steps']):.1f} s/step"
               if results[s].get("greedy_seconds") else "") for s in baselines))
    if "ours" not in results or len(results) < 2:
        return
    ours = results["ours"]
    trl = {side: r for side, r in results.items() if side.startswith("trl")}
    if "ours-lora" in results:
        lora = results["ours-lora"]
        print(f"\nLoRA against full GRPO: final held-out {lora['curve'][-1]['heldout']:.3f} vs "
              f"{ours['curve'][-1]['heldout']:.3f}; peak memory ratio (ours-lora / ours): "
              f"{lora['peak_rss'] / ours['peak_rss']:.2f}")
    if not trl:
        return
    target, side = max((r["curve"][-1]["heldout"], side) for side, r in trl.items())
    reach = next((p["minutes"] for p in ours["curve"] if p["heldout"] >= target), None)
    trl_min = results[side]["curve"][-1]["minutes"]
    print(f"\nbest TRL final held-out accuracy: {target:.3f} ({side}, at {trl_min:.1f} min); ours reached it at "
          + (f"{reach:.1f} min -> wall-clock ratio {reach / trl_min:.2f}" if reach is not None else "- (not reached)"))
    for other, r in trl.items():
        print(f"peak memory ratio (ours / {other}): {ours['peak_rss'] / r['peak_rss']:.2f}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETS), figsize=(5.5 * len(SETS), 4), sharey=True)
    for ax, key in zip(axes, SETS):
        for side, r in results.items():
            pts = [p for p in r["curve"] if key in p]
            ax.plot([p["minutes"] for p in pts], [p[key] for p in pts], marker="o", label=side)
        ax.set_title(f"greedy accuracy, {key}")
        ax.set_xlabel("training minutes")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sides", default="ours,trl,trl-tuned")
    ap.add_argument("--eval-limit", type=int, default=60)
    ap.add_argument("--eval-every", type=float, default=10.0, help="training minutes between evaluations")
    ap.add_argument("--workdir", default="/tmp/learning-bench")
    ap.add_argument("--report", action="store_true", help="print the table of an earlier run's WORKDIR/results.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    workdir = Path(args.workdir)
    if args.report:
        report(json.loads((workdir / "results.json").read_text()))
        return
    workdir.mkdir(parents=True, exist_ok=True)
    results = {side: run_side(side, args) for side in args.sides.split(",")}
    report(results)
    plot(results, workdir / "learning.png")
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"plot: {workdir / 'learning.png'}")


if __name__ == "__main__":
    main()
