"""Training metrics: one JSON object per line in OUTPUT/metrics.jsonl, and PNG plots of every series.

Train records carry `"split": "train"`, held-out ones `"split": "eval"`; both carry `step`. On resume the log
is cut back to the checkpoint's step so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.core.files import atomic_path, atomic_write_text

METRICS_FILE = "metrics.jsonl"
_NOT_PLOTTED = {"step", "epoch", "split", "time"}


@dataclass
class Stats:
    """Metric sums and counts, reduced across processes by summing, then read as sum / count."""

    sums: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, total, count) -> None:
        """Add `total` over `count` items to metric `name` (floats or 0-d tensors)."""
        entry = self.sums.setdefault(name, [0.0, 0.0])
        # tensors stay tensors (on their device, no host sync) until the step's metrics are reduced
        entry[0] = entry[0] + (total.detach() if isinstance(total, torch.Tensor) else float(total))
        entry[1] = entry[1] + (count.detach() if isinstance(count, torch.Tensor) else float(count))

    def merge(self, other: "Stats") -> None:
        for name, (total, count) in other.sums.items():
            self.add(name, total, count)

    def means(self) -> dict[str, float]:
        return {k: (float(s) / float(c) if float(c) else float("nan")) for k, (s, c) in self.sums.items()}


class MetricsLog:
    """Appends records to `run_dir/metrics.jsonl` (call only on the main process), and sends each to the run's
    `--report-to` trackers (pipelines/core/tracking.py), opened here with the run's `config`."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, report_to: list[str] | None = None,
                 config: dict | None = None) -> None:
        from pipelines.core.tracking import Trackers

        self.path = Path(run_dir) / METRICS_FILE
        kept = [] if resume_step is None else [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.trackers = Trackers(report_to, run_dir, config, resume_step=resume_step)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_clean(record)) + "\n")
        self.trackers.log(record)

    def close(self) -> None:
        """Flush and close the trackers (metrics.jsonl needs nothing)."""
        self.trackers.finish()


def _clean(record: dict) -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN; keep the key so a reader sees the metric went bad
        out[key] = value
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl (a run directory or the file itself); a torn last line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write one PNG per metric (train and eval on the same axes) to RUN_DIR/plots/; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise FileNotFoundError(f"no metrics in {run_dir / METRICS_FILE}; is {run_dir} a prefsmith training run?")
    series: dict[str, dict[str, tuple[list, list]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for rec in records:
        split = rec.get("split", "train")
        for key, value in rec.items():
            if key in _NOT_PLOTTED or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = key.removeprefix("eval/")
            xs, ys = series[name][split]
            xs.append(rec["step"])
            ys.append(value)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, by_split in sorted(series.items()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for split, (xs, ys) in sorted(by_split.items()):
            style = "-" if split == "train" else "o-"
            ax.plot(xs, ys, style, label=split, markersize=4)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / (name.replace("/", "_") + ".png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
        written.append(path)
    return written
