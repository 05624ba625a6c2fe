"""Seconds per step and peak memory: prefsmith's DPO and KTO loop vs TRL's DPOTrainer and KTOTrainer.

Same model (a random Llama, 4 layers, hidden 256, the tiny test tokenizer), same rows, same batch size and
max length, same number of optimizer steps. Each side runs in its own fresh child process (spawned one after
the other from this script) so its peak memory is its own: peak RSS on CPU, torch.cuda.max_memory_allocated on
GPU. Seconds per step are the median over steps 2..N of the optimizer step wall time; one-off setup (TRL's
tokenization, our reference pass, model loading) is reported separately. Each side runs `--repeats` times,
alternating, and its best run counts.

    .venv/bin/python bench/train.py [--steps 12] [--batch-size 8] [--rows 96] [--repeats 2]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def build_model(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_model import build_tokenizer

    if (path / "config.json").exists():
        return path
    tok = build_tokenizer(path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def rows(n: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        work = " ".join(f"{a} + {k} = {a + k}." for k in range(rng.randint(4, 12)))
        good = f"{work} So {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."
        bad = f"{work} The answer is {a + b + rng.randint(1, 9)}."
        out.append({"prompt": f"What is {a} + {b}? Show your work.", "chosen": good, "rejected": bad,
                    "completion": good if i % 2 else bad, "label": bool(i % 2)})
    return out


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_ours(algo: str, model: str, data: str, work: str, steps: int, batch: int, max_len: int, q) -> None:
    from trainers.offline.config import TrainConfig
    from trainers.offline.loop import train
    from trainers.core.metrics import read_metrics

    t0 = time.perf_counter()
    cfg = TrainConfig(algorithm=algo, model=model, data=data, output=f"{work}/ours-{algo}", lr=1e-6, max_steps=steps,
                      batch_size=batch, max_length=max_len, warmup_ratio=0.0, progress=False, plots=False,
                      ref_cache_dir=f"{work}/cache-{algo}")
    train(cfg)
    total = time.perf_counter() - t0
    per_step = [r["step_time_s"] for r in read_metrics(cfg.output) if r["split"] == "train"]
    q.put({"per_step": statistics.median(per_step[1:]), "setup": total - sum(per_step), "peak_mb": _peak_memory_mb()})


def run_trl(algo: str, model: str, data_rows: list[dict], work: str, steps: int, batch: int, max_len: int,
            precompute: bool, q) -> None:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    cols = ("prompt", "chosen", "rejected") if algo == "dpo" else ("prompt", "completion", "label")
    ds = datasets.Dataset.from_list([{c: r[c] for c in cols} for r in data_rows])
    Config, Trainer = (DPOConfig, DPOTrainer) if algo == "dpo" else (KTOConfig, KTOTrainer)
    args = Config(output_dir=f"{work}/trl-{algo}", report_to="none", use_cpu=not torch.cuda.is_available(),
                  bf16=False, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-6,
                  lr_scheduler_type="cosine", max_length=max_len, save_strategy="no", logging_steps=1,
                  precompute_ref_log_probs=precompute, disable_tqdm=True, dataloader_num_workers=0)
    timer = StepTimer()
    trainer = Trainer(model=policy, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer])
    trainer.train()
    total = time.perf_counter() - t0
    q.put({"per_step": statistics.median(timer.times[1:]), "setup": total - sum(timer.times),
           "peak_mb": _peak_memory_mb()})


def _child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="alternating repetitions per side (best is kept)")
    args = ap.parse_args()
    from pipelines.core.dataset import write_dataset

    work = Path(tempfile.mkdtemp(prefix="prefsmith-bench-train-"))
    model = str(build_model(work / "model"))
    data_rows = rows(args.rows)
    data = str(write_dataset(data_rows, work / "data"))
    n = (args.steps, args.batch_size, args.max_length)
    print(f"model: random Llama 4x256; {args.rows} rows, batch {args.batch_size}, {args.steps} steps, "
          f"max_length {args.max_length}; work dir {work}")
    print(f"{'run':<34}{'s/step':>10}{'setup s':>10}{'peak MB':>10}")
    for algo in ("dpo", "kto"):
        # Alternate the three runs `--repeats` times and keep each side's best: load from other jobs on the
        # machine then hits both sides alike instead of whichever happened to run during a busy minute.
        runs: dict[str, list[dict]] = {"ours": [], "trl": [], "trl_pre": []}
        for rep in range(args.repeats):
            runs["ours"].append(_child(run_ours, algo, model, data, str(work / f"r{rep}"), *n))
            runs["trl"].append(_child(run_trl, algo, model, data_rows, str(work / f"r{rep}"), *n, False))
            runs["trl_pre"].append(_child(run_trl, algo, model, data_rows, str(work / f"r{rep}"), *n, True))
        ours, trl, trl_pre = ({k: min(r[k] for r in runs[side]) for k in runs[side][0]} for side in runs)
        for name, r in ((f"prefsmith {algo} (cached ref)", ours), (f"TRL {algo}", trl),
                        (f"TRL {algo} precompute_ref_log_probs", trl_pre)):
            print(f"{name:<34}{r['per_step']:>10.4f}{r['setup']:>10.2f}{r['peak_mb']:>10.0f}")
        print(f"  {algo}: TRL/ours s/step = {trl['per_step'] / ours['per_step']:.2f}x (default), "
              f"{trl_pre['per_step'] / ours['per_step']:.2f}x (precomputed ref); "
              f"peak memory ours/TRL = {ours['peak_mb'] / trl['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
