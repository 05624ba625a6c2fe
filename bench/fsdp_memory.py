"""Per-process training state, plain data parallel vs `--fsdp`: bytes of weights and AdamW state each process
holds after a few sft steps (local shards counted for FSDP), and the step time. Launches itself under torchrun
twice (gloo on CPU, nccl on GPU), on a random 8-layer tiny Llama built in a temporary folder.

    .venv/bin/python bench/fsdp_memory.py [--nproc 2] [--layers 8] [--steps 3]
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


def _worker(model: str, data: str, out: str, mode: str, steps: int) -> None:
    import torch

    from trainers.offline.config import TrainConfig
    from trainers.offline.loop import TrainRun

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    run = TrainRun(TrainConfig(algorithm="sft", model=model, data=data, output=out, max_steps=steps, batch_size=4,
                               lr=1e-4, progress=False, plots=False, fsdp=mode == "fsdp"))
    run.setup()
    times = [run.step(run.next_batch())["step_time_s"] for _ in range(steps)]
    params = list(run.model.parameters())
    weights = sum(local(p).numel() * local(p).element_size() for p in params)
    adam = sum(local(v).numel() * local(v).element_size() for s in run.optimizer.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)
    if run.d.main:
        print(json.dumps({"mode": mode, "world": run.d.world, "parameters": sum(p.numel() for p in params),
                          "weights_MiB": round(weights / 2**20, 2), "adam_MiB": round(adam / 2**20, 2),
                          "step_time_s": [round(t, 3) for t in times]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--worker", nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    if args.worker:
        _worker(*args.worker, steps=args.steps)
        return
    from pipelines.core.dataset import write_dataset
    from tiny_model import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="fsdp_memory_"))
    model = build_tiny_model(tmp / "model", layers=args.layers)
    rows = [{"prompt": f"What is {i} + {i}?", "completion": f"{i} + {i} = {2 * i}. The answer is {2 * i}."}
            for i in range(40)]
    data = write_dataset(rows, tmp / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for mode in ("dp", "fsdp"):
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc),
                        "--master-addr", "127.0.0.1", "--master-port", "29790", __file__, "--steps", str(args.steps),
                        "--worker", str(model), str(data), str(tmp / mode), mode], env=env, check=True,
                       stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
