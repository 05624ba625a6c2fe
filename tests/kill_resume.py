"""Kill a real `prefsmith train` process once a checkpoint is written, `--resume` it, and compare it with a run
that was never interrupted (the online trainers' resume tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kill_at_checkpoint_then_resume(argv: list[str], out: Path, step: int) -> str:
    """Run `prefsmith ARGV` (its output: `out`) in its own process, SIGKILL it as soon as the checkpoint of `step`
    is complete, then run it again with `--resume`; returns the resumed run's stderr, checked to say it resumed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    cmd = [sys.executable, "-m", "pipelines.cli", *argv]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list((out / "checkpoints").glob(f"step-{step:08d}/trainer_state.json")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    return result.stderr


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    """The models saved in folders `a` and `b` have the same parameters, to `atol`."""
    import torch
    from transformers import AutoModelForCausalLM

    first, second = AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b)
    for (name, p), q in zip(first.named_parameters(), second.parameters()):
        assert torch.allclose(p, q, atol=atol), name
