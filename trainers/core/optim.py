"""AdamW with decay / no-decay groups and the learning-rate schedule, for every trainer."""
from __future__ import annotations

import math

import torch


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.0,
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices are decayed, norms and biases (ndim < 2) are not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_lambda(step: int, total: int, warmup: int, kind: str) -> float:
    """Linear warmup to 1, then cosine or linear decay to 0 at `total` (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def lr_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int,
                kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_lambda` as a scheduler: warmup over `warmup` steps, then `kind` (cosine | linear | constant)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total, warmup, kind))
