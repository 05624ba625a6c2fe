"""Where a run executes and how its processes agree: the torchrun process group and device (`Dist`), and the
two all-reduces every data-parallel step needs (gradients, metric sums).

Shared by the offline loop (trainers/loop.py) and meant for the online loops: on one process every function
here is a no-op, so a loop calls them unconditionally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from trainers.metrics import Stats


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the torchrun process group if there is one (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank=rank, world=world, device=device)


def reduce_stats(stats: Stats, names: tuple[str, ...], d: Dist) -> Stats:
    """Sum metric sums and counts over processes. `names` is a fixed list, identical on every process (a
    process with no data this step sends zeros), so the all-reduce always has the same shape."""
    flat = torch.tensor([v for n in names for v in stats.sums.get(n, [0.0, 0.0])], dtype=torch.float64)
    if d.world > 1:
        flat = flat.to(d.device)
        dist.all_reduce(flat)
        flat = flat.cpu()
    out = Stats()
    for i, n in enumerate(names):
        if flat[2 * i + 1] > 0:
            out.sums[n] = [float(flat[2 * i]), float(flat[2 * i + 1])]
    return out


def all_reduce_grads(params: list[torch.nn.Parameter], d: Dist, bucket_elems: int = 1 << 25) -> None:
    """Sum gradients over processes, in flat buckets (a process with no data this step contributes zeros)."""
    if d.world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= bucket_elems or i == len(params) - 1:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def gather_objects(obj, d: Dist) -> list:
    """Every process's `obj`, in rank order (`[obj]` on one process)."""
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, d: Dist):
    """Rank 0's `obj` on every process."""
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
