"""Sharded training with torch's FSDP2 (`fully_shard`), opt-in with `--fsdp` under torchrun (docs/training.md,
"Sharded training (FSDP2)").

Each decoder layer is one FSDP unit and the root module (embeddings, final norm, head) another, on a 1-D mesh
over all processes (cpu + gloo, or cuda + nccl). Parameters, gradients and AdamW state then live as 1/world
shards (DTensors); a layer's full weights exist only while it runs. What stays the same as plain data
parallel (trainers/core/distributed.py):
- gradients are *summed* over processes: every process divides its loss by the step's global unit count, so
  the sum is one process's gradient. FSDP averages by default; `shard_model` sets the divide factor to 1 and
  forces a plain SUM reduce-scatter (gloo refuses the PREMUL_SUM op a factor would otherwise use);
- `torch.nn.utils.clip_grad_norm_` over the DTensor parameters returns the global norm (it reduces the
  shards' norms itself), so clipping is unchanged;
- a checkpoint and the final model are full, `from_pretrained`-loadable folders: `full_state` gathers the
  weights and optimizer state onto rank 0's CPU, `load_optimizer` scatters a saved full state back.

Every forward of a sharded model is a collective (the layers all-gather their weights), so all processes must
run the same number of forwards and backwards: `common_count` gives the loops one count, and a process with
fewer batches of its own runs a padding batch whose loss is multiplied by zero.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist

from trainers.core.distributed import Dist


def _fsdp():
    from torch.distributed.fsdp import FSDPModule, fully_shard

    return FSDPModule, fully_shard


def is_sharded(model) -> bool:
    return isinstance(model, _fsdp()[0])


def _units(model) -> list:
    FSDPModule, _ = _fsdp()
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a Hugging Face model (`model.base_model.layers`: Llama, Qwen, Mistral, ...)."""
    from pipelines.errors import UserError

    layers = getattr(getattr(model, "base_model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise UserError(f"--fsdp: {type(model).__name__} has no `base_model.layers` list of decoder layers to shard")
    return layers


def check_supported(d: Dist, lora: bool = False) -> None:
    """One line for the setups `--fsdp` does not cover."""
    from pipelines.errors import UserError

    if d.world < 2:
        raise UserError("--fsdp shards over processes: launch with torchrun --nproc-per-node N (N >= 2)")
    if lora:
        raise UserError("--fsdp with --lora-r is not supported: LoRA trains few weights, use plain data parallel")


def shard_model(model, d: Dist, layers=None):
    """`fully_shard` every decoder layer, then the root; gradients summed over processes (see the module doc).
    The model may sit on the CPU: each process keeps (and moves to its device) only its shards. `layers`: the
    blocks to shard when the root is a wrapper around a Hugging Face model (PPO's value model)."""
    from torch.distributed.device_mesh import init_device_mesh

    _, fully_shard = _fsdp()
    mesh = init_device_mesh(d.device.type, (d.world,))
    for layer in (decoder_layers(model) if layers is None else layers):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for unit in _units(model):
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return model


def common_count(n: int, d: Dist) -> int:
    """The largest `n` over processes: how many forwards every process runs so the all-gathers pair up."""
    if d.world == 1:
        return n
    t = torch.tensor([n], dtype=torch.int64, device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


@contextmanager
def full_weights(model):
    """All weights gathered on every process for the duration (sampling: hundreds of small forwards, each then a
    local computation with no collective, so processes may run different numbers of them). Needs memory for one
    full copy of the weights; outside the block only the shards remain.

    transformers' `generate` turns on `synced_gpus` for a module carrying torch's `_is_fsdp_managed_module` mark
    (every process keeps stepping until all are done, one all_reduce per token, which hangs when processes make
    different numbers of `generate` calls); with the weights gathered nothing needs syncing, so the mark is
    lifted for the block."""
    if not is_sharded(model):
        yield model
        return
    units = _units(model)
    model.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    mark = model.__dict__.get("_is_fsdp_managed_module")
    model._is_fsdp_managed_module = False
    try:
        yield model
    finally:
        if mark is None:
            del model._is_fsdp_managed_module
        else:
            model._is_fsdp_managed_module = mark
        for unit in units:
            unit.reshard()
        model.set_reshard_after_forward(True)  # the layers' default
        model.set_reshard_after_forward(False, recurse=False)  # the root's: its weights are needed again in backward


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(model, optimizer=None) -> tuple[dict, dict | None]:
    """(model state dict, optimizer state dict), full and on the CPU on rank 0 ({} elsewhere). Called by every
    process (it all-gathers). The optimizer's state is keyed by parameter name, as `load_optimizer` reads it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model, options=_options(cpu_offload=True))
    optim = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True)) if optimizer else None
    return weights, optim


def load_optimizer(model, optimizer, state: dict | None) -> None:
    """Restore a full, name-keyed optimizer state (read by rank 0; `None` elsewhere) into the shards."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state or {}, options=_options(broadcast_from_rank0=True))
