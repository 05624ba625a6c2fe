"""The one place a model is trained. Every trainer — the offline `TrainRun` (sft, dpo, kto, rm, prm), GRPO/RLOO
and PPO (its value model included) — hands the Learner its models and then calls

    metrics = learner.update(batches, loss_fn)     # one optimizer step

and nothing else of the update machinery. Decided here, once:
- **device** (`--device auto|cpu|cuda[:N]`; auto: this process's GPU — `LOCAL_RANK` under torchrun — else the
  CPU) and the process group's backend (nccl on CUDA, gloo on CPU): `trainers/core/distributed.py`;
- **precision** (`--dtype auto|bf16|fp32`; auto: bf16 on CUDA, fp32 on CPU). Master weights and AdamW state
  stay fp32; bf16 is autocast compute (the matmuls), log-softmax and losses in fp32. docs/gpu.md compares this
  with TRL;
- **placement**: each model on the device, gradient checkpointing when asked, FSDP2 shards under `--fsdp`;
- **the step**: for each micro-batch, the loss under autocast and its backward (a padding micro-batch, which a
  sharded model needs so every process runs as many forwards, weighs 0); gradients summed over processes on the
  device (FSDP has already reduce-scattered them); each model's norm clipped; optimizer steps;
- **metrics**: kept as tensors on the device while the step runs, summed over processes in one all-reduce and
  brought to the host once (`Stats`: name → (sum, count), read as sum / count).

A loss function only produces a loss: `loss_fn(k, batch) -> (loss, Stats)`, the loss already divided by
whatever the step normalizes by (tokens, pairs, sequences), so that the micro-batches' gradients add up to the
step's.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from trainers.core import fsdp
from trainers.core.distributed import Dist, all_reduce_grads, reduce_stats
from trainers.core.metrics import Stats

DTYPES = ("auto", "bf16", "fp32")


def resolve_dtype(spec: str, device: torch.device) -> str:
    """`auto` → bf16 on CUDA, fp32 elsewhere (bf16 autocast on a CPU is slower than fp32 there)."""
    if spec not in DTYPES:
        from pipelines.errors import UserError

        raise UserError(f"--dtype {spec!r}: choose one of {', '.join(DTYPES)}")
    if spec == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if spec == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        from pipelines.errors import UserError

        raise UserError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bf16; use --dtype fp32")
    return spec


@dataclass
class Part:
    """One trained model with its optimizer, schedule and clipping (PPO has two: the policy and the value)."""

    name: str  # metric prefix: "" for the policy, "value_" for PPO's value model
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    max_grad_norm: float


class Learner:
    def __init__(self, d: Dist, dtype: str = "auto", gradient_checkpointing: bool = False,
                 shard: bool = False) -> None:
        self.d = d
        self.device = d.device
        self.dtype = resolve_dtype(dtype, d.device)
        self.gradient_checkpointing = gradient_checkpointing
        self.shard = shard
        self.parts: list[Part] = []
        _trim_cpu_heap(self.device, first=True)

    # ------------------------------------------------------------------------------------ placement
    def place(self, model: torch.nn.Module, train: bool = True, layers=None) -> torch.nn.Module:
        """`model` on the device, sharded under `--fsdp` (`layers`: the blocks to shard when the root is a wrapper),
        with gradient checkpointing when asked and `train`."""
        if train and self.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if self.shard and not fsdp.is_sharded(model):
            fsdp.shard_model(model, self.d, layers=layers)
        model.to(self.device)
        if not train:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
        return model

    def add(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, max_grad_norm: float = 1.0,
            name: str = "") -> Part:
        """Register a placed model as trained by `update` (its optimizer over its trainable parameters)."""
        part = Part(name, model, [p for p in model.parameters() if p.requires_grad], optimizer, scheduler,
                    max_grad_norm)
        self.parts.append(part)
        return part

    @property
    def sharded(self) -> bool:
        return any(fsdp.is_sharded(p.model) for p in self.parts)

    def autocast(self):
        if self.dtype != "bf16":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def tensor(self, data, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(data, dtype=dtype, device=self.device)

    def batch_count(self, real: int) -> int:
        """How many micro-batches this process runs when it has `real` of its own: under FSDP every process runs as
        many as the busiest one (each forward is a collective), the extra ones padding whose loss weighs 0."""
        return fsdp.common_count(real, self.d) if self.sharded else real

    # ------------------------------------------------------------------------------------ the step
    def forward(self, batches: Sequence, fn: Callable):
        """`fn(k, batch)` for every micro-batch with no gradient, under autocast (old, reference and value
        log-probs before an update)."""
        with torch.no_grad(), self.autocast():
            return [fn(k, b) for k, b in enumerate(batches)]

    def update(self, batches: Sequence, loss_fn: Callable, names: Iterable[str], real: int | None = None,
               before: Callable | None = None) -> dict[str, float]:
        """One optimizer step over this process's micro-batches `batches`, of which the first `real` are its own
        (the rest pad a sharded step). `loss_fn(k, batch) -> (loss, Stats)`; `names`: every metric the losses
        report, the same list on every process. `before()`: run under autocast before the micro-batches (KTO's
        KL estimate). Returns the step's metrics (means over every process) and each part's `grad_norm` (before
        clipping) and `lr`."""
        real = len(batches) if real is None else real
        for part in self.parts:
            part.optimizer.zero_grad(set_to_none=True)
        stats = Stats()
        if before is not None:
            with self.autocast():
                before()
        for k, batch in enumerate(batches):
            with self.autocast():
                loss, s = loss_fn(k, batch)
            if k >= real:
                (loss * 0.0).backward()
                continue
            loss.backward()
            stats.merge(s)
        norms = []
        for part in self.parts:
            if not fsdp.is_sharded(part.model):  # FSDP has already summed the gradients in backward
                all_reduce_grads(part.params, self.d)
            limit = part.max_grad_norm if part.max_grad_norm > 0 else float("inf")
            norms.append(torch.nn.utils.clip_grad_norm_(part.params, limit))
        lrs = [part.optimizer.param_groups[0]["lr"] for part in self.parts]
        for part in self.parts:
            part.optimizer.step()
            part.optimizer.zero_grad(set_to_none=True)
        reduced = reduce_stats(stats, tuple(names), self.d, extra=[n.detach().to(torch.float64) for n in norms])
        out, norm_values = reduced
        for part, norm, lr in zip(self.parts, norm_values, lrs):
            out[f"{part.name}grad_norm"] = norm
            out[f"{part.name}lr"] = lr
        _trim_cpu_heap(self.device)
        return out

    def whiten(self, xs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
        """In place: (x - mean) / std over the masked entries of every tensor on every process (unbiased variance,
        as `rl_objectives.masked_whiten`; PPO's advantages over the whole step). Two all-reduces on the device."""
        import torch.distributed as dist

        picked = torch.cat([x[m.bool()] for x, m in zip(xs, masks)]) if xs else torch.zeros(0, device=self.device)
        total = torch.stack([picked.sum(), torch.tensor(float(picked.numel()), device=picked.device)])
        if self.d.world > 1:
            dist.all_reduce(total)
        mean = total[0] / total[1]
        sq = ((picked - mean) ** 2).sum()
        if self.d.world > 1:
            dist.all_reduce(sq)
        white = (picked - mean) * torch.rsqrt(sq / (total[1] - 1).clamp(min=1.0) + 1e-8)
        for x, m in zip(xs, masks):
            n = int(m.sum())
            x[m.bool()], white = white[:n], white[n:]

    def schedule(self) -> None:
        """Advance every part's learning-rate schedule (once per trainer step, after its updates)."""
        for part in self.parts:
            if part.scheduler is not None:
                part.scheduler.step()


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them (transformers' own
    checkpointing, non-reentrant, which needs no input gradients and works under LoRA and FSDP)."""
    inner = model
    while not hasattr(inner, "gradient_checkpointing_enable") and hasattr(inner, "model"):
        inner = inner.model  # PPO's value wrapper
    if not hasattr(inner, "gradient_checkpointing_enable"):
        from pipelines.errors import UserError

        raise UserError(f"--gradient-checkpointing: {type(model).__name__} does not support it")
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = getattr(inner, "config", None)
    if config is not None:
        config.use_cache = False  # the trainers' forwards never use it; generation passes its own cache


def _trim_cpu_heap(device: torch.device, first: bool = False) -> None:
    """On CPU, hand a step's freed activations back to the OS (glibc `malloc_trim`). Batches of changing lengths
    otherwise fragment the heap, and resident memory creeps up step after step. `first` (before any work): also
    fix glibc's mmap threshold (512 KiB: on bench/train.py 256 KiB cost step time, 1 MiB left DPO at 1.01x TRL's
    peak)."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        if first:
            # a fixed threshold: glibc otherwise raises it after every freed big block, and activations then come
            # from the heap, where they fragment it; mmapped blocks go back to the OS the moment they are freed
            libc.mallopt(-3, 1 << 19)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl...): nothing to trim
        pass
