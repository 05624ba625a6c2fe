"""SIGKILL a real training process after a checkpoint exists, `--resume`, and get the uninterrupted run's
final weights exactly (and the same metrics log)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pipelines.core.dataset import write_dataset
from trainers.core.checkpoint import list_checkpoints
from trainers.core.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def _cmd(model: Path, data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainers.cli", "dpo", "--model", str(model), "--data", str(data),
            "--output", str(out), "--lr", "1e-3", "--max-steps", "24", "--batch-size", "4", "--save-every", "4",
            "--no-progress", "--no-plots", "--ref-cache-dir", str(cache), *extra]


def test_killed_run_resumes_to_identical_weights(tiny_model, tmp_path, capsys):
    rng = random.Random(2)
    rows = []
    for i in range(20):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        rows.append({"prompt": f"What is {a} + {b}?", "chosen": f"{a} + {b} = {a + b}." + " ok" * (i % 3),
                     "rejected": f"It is {a * b}."})
    data = write_dataset(rows, tmp_path / "pref")
    cache = tmp_path / "cache"

    full = subprocess.run(_cmd(tiny_model, data, tmp_path / "full", cache), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(tiny_model, data, out, cache), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list_checkpoints(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model" / "model.safetensors").exists(), "the run finished before it could be killed"
    killed_at = json.loads((list_checkpoints(out)[-1] / "trainer_state.json").read_text())["step"]
    assert 4 <= killed_at < 24

    resumed = subprocess.run(_cmd(tiny_model, data, out, cache, "--resume"), cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr

    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name
    # the metrics log reads as one run: steps 1..24 once each, same losses
    full_log, resumed_log = read_metrics(tmp_path / "full"), read_metrics(out)
    assert [r["step"] for r in resumed_log] == list(range(1, 25))
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in full_log], abs=1e-6)
    assert len(list_checkpoints(out)) == 2  # --save-total-limit default keeps the newest two
    assert json.loads((out / "run_info.json").read_text())["ref_cache"]["train"]["hit"] is True

    # resuming with a setting that changes the data order is refused with a message naming it
    from trainers.cli import main

    args = _cmd(tiny_model, data, out, cache, "--resume")[3:]
    args[args.index("--batch-size") + 1] = "5"
    assert main(args) == 2
    assert "--batch-size 4 -> 5" in capsys.readouterr().err
