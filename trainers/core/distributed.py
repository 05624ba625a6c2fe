"""Where a run executes and how its processes agree: the torchrun process group and device (`Dist`), and the
two all-reduces every data-parallel step needs (gradients, metric sums).

Shared by the offline loop (trainers/offline/loop.py) and meant for the online loops: on one process every function
here is a no-op, so a loop calls them unconditionally.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from trainers.core.metrics import Stats


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


DEVICES = "auto | cpu | cuda | cuda:N"


def pick_device(spec: str = "auto") -> torch.device:
    """`auto`: this process's GPU (`LOCAL_RANK` under torchrun, else GPU 0) when CUDA is there, else the CPU;
    `cuda` likewise but refusing a machine without CUDA; `cuda:N` that GPU; `cpu` the CPU."""
    from pipelines.errors import UserError

    spec = (spec or "auto").strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                            "use --device cpu or auto")
        index = local_rank if spec == "cuda" else int(spec.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: GPU {index} does not exist ({torch.cuda.device_count()} visible)")
        return torch.device(f"cuda:{index}")
    raise UserError(f"--device {spec!r}: choose one of {DEVICES}")


def setup_distributed(device: str = "auto") -> Dist:
    """This process's device (`pick_device`), and the torchrun process group if there is one (nccl on a GPU,
    gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        # tear the group down before the interpreter does: left to exit-time destructors, gloo's worker threads
        # can be destroyed while joinable and abort the process ("terminate called without an active exception")
        atexit.register(_destroy_group)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank=rank, world=world, device=dev)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def reduce_stats(stats: Stats, names: tuple[str, ...], d: Dist, extra: list[torch.Tensor] | None = None):
    """Sum metric sums and counts over processes. `names` is a fixed list, identical on every process (a
    process with no data this step sends zeros), so the all-reduce always has the same shape. The values stay
    on the device until one transfer at the end.

    With `extra` (0-d tensors already global, e.g. gradient norms): returns (means, their values), brought to
    the host in the same transfer; without it, the reduced `Stats`."""
    zero = torch.zeros((), dtype=torch.float64, device=d.device)
    flat = torch.stack([_as(v, d.device) if v is not None else zero for n in names
                        for v in stats.sums.get(n, [None, None])]) if names else zero.new_zeros(0)
    if d.world > 1 and names:
        dist.all_reduce(flat)
    more = [_as(v, d.device) for v in extra or []]
    values = torch.cat([flat, torch.stack(more)]).tolist() if more else flat.tolist()
    out = Stats()
    for i, n in enumerate(names):
        if values[2 * i + 1] > 0:
            out.sums[n] = [values[2 * i], values[2 * i + 1]]
    if extra is None:
        return out
    return out.means(), values[2 * len(names):]


def _as(value, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if hasattr(value, "full_tensor"):  # a DTensor (a sharded model's global gradient norm): its full value
            value = value.full_tensor()
        return value.detach().to(device=device, dtype=torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64, device=device)


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
