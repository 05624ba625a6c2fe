"""`torchrun --nproc-per-node 2` (gloo, CPU) trains data-parallel with the same loss curve as one process."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.dataset import write_dataset
from trainers.offline.config import TrainConfig
from trainers.offline.loop import train
from trainers.core.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int) -> list[dict]:
    rng = random.Random(1)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        good = f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}." + " step" * (i % 5)
        rows.append({"prompt": f"What is {a} + {b}?", "completion": good if i % 2 else f"It is {a - b}.",
                     "label": bool(i % 2), "chosen": good, "rejected": f"It is {a - b}."})
    return rows


def _torchrun(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(29500 + os.getpid() % 1000), "-m", "trainers.cli", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("algorithm,extra", [("dpo", ["--grad-accum", "2"]), ("kto", [])])
def test_two_processes_match_one(tiny_model, tmp_path, algorithm, extra):
    data = write_dataset(_rows(30), tmp_path / "data")
    common = dict(lr=1e-3, max_steps=5, batch_size=6, warmup_ratio=0.0, progress=False, plots=False,
                  eval_split=0.2)
    single = train(TrainConfig(algorithm=algorithm, model=str(tiny_model), data=str(data), output=str(tmp_path / "one"),
                               ref_cache_dir=str(tmp_path / "cache1"), **common))
    # separate cache: the two processes compute their halves of the reference pass and gather them
    _torchrun([algorithm, "--model", str(tiny_model), "--data", str(data), "--output", str(tmp_path / "two"),
               "--lr", "1e-3", "--max-steps", "5", "--batch-size", "6", "--warmup-ratio", "0", "--eval-split", "0.2",
               "--no-progress", "--no-plots", "--ref-cache-dir", str(tmp_path / "cache2"), *extra], tmp_path)
    one = read_metrics(single.output)
    two = read_metrics(tmp_path / "two")
    one_train = [r for r in one if r["split"] == "train"]
    two_train = [r for r in two if r["split"] == "train"]
    assert [r["step"] for r in two_train] == [1, 2, 3, 4, 5]
    for a, b in zip(one_train, two_train):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
        assert b["examples"] == a["examples"] == 6  # global batch, 3 per process
    if algorithm == "kto":
        assert [b["kl"] for b in two_train] == pytest.approx([a["kl"] for a in one_train], abs=1e-4)
    eval_one, eval_two = one[-1], two[-1]
    assert eval_one["split"] == eval_two["split"] == "eval"
    assert eval_two["eval/loss"] == pytest.approx(eval_one["eval/loss"], abs=1e-4)
