"""The main job (`make demo`): run data/pipelines/demo.yaml on the embedded default model and print a report.

Every stage is resumable: interrupt it and run `make demo` again to continue where it stopped.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.core.dataset import load_table, read_manifest  # noqa: E402
from pipelines.engines.models import fetch_default  # noqa: E402
from pipelines.pipeline import load_pipeline, run_pipeline  # noqa: E402

PIPELINE = os.environ.get("PREFSMITH_DEMO_PIPELINE", str(ROOT / "data/pipelines/demo.yaml"))


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def report(outputs: dict[str, str], seconds: float) -> None:
    from pipelines.stages.generate import report as rollout_report

    section("prefsmith demo report")
    spec = {s["name"]: s for s in load_pipeline(PIPELINE)["stages"]}
    for name, out in outputs.items():
        command = spec[name]["command"]
        manifest = read_manifest(out) or {}
        if command == "generate":
            r = rollout_report(out)
            print(f"{name:>18}: {r['rows']} rollouts of {r['prompts']} prompts, {r['completion_tokens']} tokens "
                  f"({r['mean_completion_tokens']}/completion) at {r['tokens_per_s']} tokens/s; finish reasons {r['finish_reasons']}")
        elif command == "label":
            summary = manifest.get("summary", {})
            means = {k: v["mean"] for k, v in summary.get("rewards", {}).items()}
            acc = means.get("math")
            print(f"{name:>18}: {manifest.get('rows_out')} rows; mean rewards "
                  + ", ".join(f"{k} {v:.3f}" for k, v in means.items() if v is not None)
                  + (f"; math accuracy {acc:.1%}" if acc is not None else ""))
        elif command == "train":
            metrics = Path(out) / "metrics.jsonl"
            rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
            evals = [r for r in rows if r.get("split") == "eval"]
            train = [r for r in rows if r.get("split") == "train"]
            sets = sorted(k[len("accuracy_"):] for k in (evals[0] if evals else {}) if k.startswith("accuracy_"))
            for name_ in sets:  # the online loop: held-out greedy accuracy along the run
                key = f"accuracy_{name_}"
                curve = ", ".join(f"{e[key]:.3f} (step {e['step']}, {e['minutes']:.1f} min)" for e in evals)
                before, after = evals[0][key], evals[-1][key]
                limit = spec[name]["args"].get("eval_limit")
                print(f"{name:>18}: held-out greedy accuracy on {name_}{f' (first {limit} prompts)' if limit else ''}: "
                      f"{before:.1%} before -> {after:.1%} after {evals[-1]['step']} steps ({100 * (after - before):+.1f} points)")
                print(f"{'':>18}  curve: {curve}")
            if train:
                last = train[-1]
                print(f"{name:>18}: {len(train)} steps, {sum(r['step_seconds'] for r in train) / len(train):.0f} s/step, "
                      f"training reward {train[0].get('reward')} -> {last.get('reward')}")
            plots = sorted(str(p) for p in (Path(out) / "plots").glob("accuracy*.png"))
            model_dir = Path(out) / "model" if (Path(out) / "model").is_dir() else Path(out)
            print(f"{name:>18}: model saved in {model_dir}; curves: {', '.join(plots) or 'none'}")
        elif command == "stats":
            target = Path(spec[name]["args"]["input"].lstrip("@"))
            target = Path(outputs.get(str(target), target))
            print(f"{name:>18}: table printed above; histograms in {target / 'stats.png'}")
        else:
            detail = {"dedup": lambda m: m.get("counts"),
                      "decontaminate": lambda m: {k: v.get("removed") for k, v in m.get("decontamination", {}).get("per_eval", {}).items()},
                      "pairs": lambda m: {k: m.get("summary", {}).get(k) for k in ("prompts", "prompts_with_pairs", "pairs")},
                      "kto": lambda m: m.get("kto"),
                      "select": lambda m: {k: v for k, v in m.get("summary", {}).items() if not isinstance(v, dict)}}
            extra = detail.get(command, lambda m: None)(manifest)
            print(f"{name:>18}: {manifest.get('rows_in')} rows in -> {manifest.get('rows_out')} out"
                  + (f"; {json.dumps(extra, default=str)}" if extra else ""))
    print(f"\nall stages finished in {seconds:.0f}s; outputs under {Path(next(iter(outputs.values()))).parent}")


def main() -> int:
    t0 = time.time()
    fetch_default()
    outputs = run_pipeline(PIPELINE)
    report(outputs, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
