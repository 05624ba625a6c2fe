"""Peak memory and seconds of forward + backward of `token_logps(...).sum()`: the scored positions projected onto
the vocabulary all at once (`chunk_tokens=0`) vs in chunks (trainers/core/logprobs.py).

The embedded SmolLM2-135M (V = 49152, fp32, every weight trained), a GRPO-sized micro-batch: 8 sequences of
100 prompt + 300 completion tokens, the completions scored (2400 positions), entropy on as in GRPO's training pass.
Each configuration runs in its own fresh child process: peak RSS (ru_maxrss) on CPU, max_memory_allocated on
GPU; "after load" is the RSS with the model loaded, before the first forward. Seconds: the median of `--repeats`
forward + backward passes after the first. `checkpoint` is the path a head that is not a plain Linear (a peft
LoRA lm_head) takes: the head called per chunk under torch.utils.checkpoint.

    .venv/bin/python bench/logprobs_memory.py [--chunks 0,256,512,1024,2048] [--repeats 3]

Measured on the 2-core CPU machine, torch 2.13+cpu, shared with other jobs (load 3 to 7): the full-step seconds
are noise; "projection s" times the projection alone, modes interleaved in one process (`_projection_worker`).
`decoder` is the floor: the same forward and backward with no vocabulary projection at all.

    $ .venv/bin/python bench/logprobs_memory.py --chunks 0,256,512,1024,2048 --repeats 1
    cpu, 8 x (100 + 300) tokens, 2400 scored, peak RSS
    mode        chunk  after load MiB  peak MiB  peak - load MiB  peak vs unchunked  seconds  projection s
    decoder         0             431      7218             6787               0.76    93.94             -
    unchunked       0             431      9480             9049               1.00   104.77          6.40
    chunked       256             431      7472             7041               0.79    49.23          8.62
    chunked       512             431      7331             6899               0.77    43.54          7.92
    chunked      1024             431      7762             7331               0.82    74.47          7.69
    chunked      2048             431      8467             8036               0.89    71.10          7.52
    checkpoint    512             431      7664             7232               0.81    50.75          9.75

The projection's share of the peak (peak minus the decoder floor): 2262 MiB unchunked, 113 MiB in chunks of 512
(CHUNK_TOKENS), 20x less; what is left is the decoder's activations and the weights' gradients. The price is one
more (scored x V) matmul in backward, the logits recomputed: +24% on the projection (7.9 s vs 6.4 s), ~1.5 s of
a 45-100 s micro-batch here. The checkpointed path (a head that is not a plain Linear) keeps more per chunk in
its backward and runs slower still; chunks of 256 save no more memory and run slower, 1024 and 2048 keep more.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _worker(mode: str, chunk: int, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.engines.models import resolve_model
    from trainers.core.logprobs import token_logps

    class Wrapped(torch.nn.Module):  # not an nn.Linear: token_logps calls it per chunk under checkpointing
        def __init__(self, linear: torch.nn.Linear):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            return self.linear(x)

    device = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32).to(device)
    if mode == "checkpoint":
        model.lm_head = Wrapped(model.lm_head)
    model.train()
    g = torch.Generator().manual_seed(0)
    width = args.prompt + args.completion
    ids = torch.randint(3, model.config.vocab_size, (args.batch, width), generator=g)
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, args.prompt:] = 1
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask}
    batch = {k: v.to(device) for k, v in batch.items()}
    after_load = _rss_mib() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        if mode == "decoder":  # the floor: the same forward and backward with no vocabulary projection at all
            hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                         use_cache=False).last_hidden_state
            hidden[:, :-1][batch["loss_mask"][:, 1:].bool()].sum().backward()
        else:
            logps, _entropy = token_logps(model, batch, with_entropy=True, chunk_tokens=chunk)
            logps.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = _rss_mib() if device.type == "cpu" else torch.cuda.max_memory_allocated(device) / 2**20
    return {"mode": mode, "chunk": chunk, "after_load": after_load, "peak": peak,
            "seconds": statistics.median(seconds[1:])}


def _projection_worker(chunks: list[int], args: argparse.Namespace) -> dict:
    """Seconds of forward + backward of the projection alone (the decoder's share is the same in every mode):
    hidden states (scored, 576) onto the model's 49152 x 576 head, modes interleaved so that the load of a shared
    machine weighs on each alike; the median of `--repeats` rounds after the first."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from pipelines.engines.models import resolve_model
    from trainers.core.logprobs import _LinearLogps, _module_logps, _score, _upcast

    device = torch.device(args.device)
    head = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32).lm_head.to(device)
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.completion
    hidden = torch.randn(n, head.in_features, generator=g).to(device).requires_grad_()
    targets = torch.randint(0, head.out_features, (n,), generator=g).to(device)
    modes = {"unchunked 0": lambda: _score(_upcast(F.linear(hidden, head.weight)), targets, True)[0]}
    modes |= {f"chunked {c}": lambda c=c: _LinearLogps.apply(hidden, head.weight, None, targets, c, True)[0]
              for c in chunks if c}
    modes[f"checkpoint {args.checkpoint_chunk}"] = lambda: _module_logps(head, hidden, targets, args.checkpoint_chunk,
                                                                         True)[0]
    seconds = {name: [] for name in modes}
    for _ in range(args.repeats + 1):
        for name, fn in modes.items():
            start = time.perf_counter()
            fn().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s[1:]) for name, s in seconds.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--chunks", default="0,256,512,1024,2048", help="chunk sizes; 0 = unchunked")
    p.add_argument("--checkpoint-chunk", type=int, default=512, help="chunk of the checkpointed run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=100)
    p.add_argument("--completion", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    p.add_argument("--projection-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path[:0] = [str(ROOT)]
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(_worker(args.worker[0], int(args.worker[1]), args)), flush=True)
        return
    if args.projection_worker:
        print(json.dumps(_projection_worker([int(c) for c in args.projection_worker.split(",")], args)), flush=True)
        return
    runs = [("decoder", 0)] + [("unchunked" if int(c) == 0 else "chunked", int(c)) for c in args.chunks.split(",")]
    runs.append(("checkpoint", args.checkpoint_chunk))
    flags = ["--batch", str(args.batch), "--prompt", str(args.prompt), "--completion", str(args.completion),
             "--repeats", str(args.repeats), "--device", args.device]
    results = []
    for mode, chunk in runs:
        out = subprocess.run([sys.executable, __file__, *flags, "--worker", mode, str(chunk)], check=True,
                             capture_output=True, text=True, cwd=ROOT).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {mode} {chunk}: {results[-1]}", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, __file__, *flags, "--checkpoint-chunk", str(args.checkpoint_chunk),
                          "--projection-worker", args.chunks], check=True, capture_output=True, text=True,
                         cwd=ROOT).stdout
    projection = json.loads(out.strip().splitlines()[-1])
    base = next(r["peak"] for r in results if r["mode"] == "unchunked")
    memory = "RSS" if args.device == "cpu" else "allocated"
    print(f"{args.device}, {args.batch} x ({args.prompt} + {args.completion}) tokens, "
          f"{args.batch * args.completion} scored, peak {memory}")
    print(f"{'mode':<10} {'chunk':>6}  {'after load MiB':>14}  {'peak MiB':>8}  {'peak - load MiB':>15}  "
          f"{'peak vs unchunked':>17}  {'seconds':>7}  {'projection s':>12}")
    for r in results:
        seconds = projection.get(f"{r['mode']} {r['chunk']}")
        print(f"{r['mode']:<10} {r['chunk']:>6}  {r['after_load']:>14.0f}  {r['peak']:>8.0f}  "
              f"{r['peak'] - r['after_load']:>15.0f}  {r['peak'] / base:>17.2f}  {r['seconds']:>7.2f}  "
              f"{'-' if seconds is None else f'{seconds:.2f}':>12}")


if __name__ == "__main__":
    main()
