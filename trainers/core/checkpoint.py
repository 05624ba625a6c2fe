"""Checkpoints: everything needed to continue a run bit-for-bit, written atomically.

Layout: OUTPUT/checkpoints/step-00000010/ with the model (or LoRA adapter) and tokenizer as
`save_pretrained` writes them (so a checkpoint loads with `from_pretrained`), `optimizer.pt`, `scheduler.pt`,
`rng.pt` (torch/python/numpy/cuda states of every rank) and `trainer_state.json` (step, epoch, position in
the epoch's batch order). A checkpoint is written to a temporary directory and renamed into place, so a kill
mid-save leaves the previous checkpoint intact. A model sharded with `--fsdp` is saved the same way: its full
weights and optimizer state are first gathered onto rank 0 (trainers/core/fsdp.py); that optimizer state is keyed by
parameter name, not position.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipelines.core.files import atomic_directory, atomic_write_json, atomic_write_text
from trainers.core.distributed import Dist, barrier, gather_objects

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where the loop is: optimizer steps done, and the position inside the current epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples_seen: int = 0
    groups_kept: int = 0  # online RL: groups trained so far (dynamic sampling's keep rate is kept / examples_seen)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(output: str | Path) -> Path:
    return Path(output) / CHECKPOINT_DIR


def list_checkpoints(output: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output: str | Path) -> Path | None:
    found = list_checkpoints(output)
    return found[-1] if found else None


def save_checkpoint(
    output: str | Path,
    model,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: TrainerState,
    rng_states: list[dict],
    config_json: str,
    keep: int = 2,
    weights: dict | None = None,
    optimizer_state: dict | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint for `state.step` (main process only) and prune all but the newest `keep`. `weights` and
    `optimizer_state`: already gathered full state dicts (a sharded model), else the model's and optimizer's own."""
    root = checkpoint_root(output)
    for stale in root.glob(".step-*.tmp"):  # a save killed midway
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{state.step:08d}"
    with atomic_directory(final) as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states, tmp / "rng.pt")
        atomic_write_text(tmp / "prefsmith_train.json", config_json)
        if extra is not None:  # a trainer's own state (PPO's value model), inside the same atomic directory
            extra(tmp)
        # The state file is the completeness marker: written last, inside the temp dir, before the rename.
        atomic_write_json(tmp / STATE_FILE, asdict(state))
    if keep > 0:
        for old in list_checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint_all_ranks(
    d: Dist,
    output: str | Path,
    model,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: TrainerState,
    config_json: str,
    keep: int = 2,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """`save_checkpoint` called from every process: each rank's RNG state is gathered, rank 0 writes, all wait
    until the checkpoint is in place (so no rank runs ahead of a save that could still fail). A sharded model's
    weights and optimizer state are gathered first, on every rank."""
    from trainers.core import fsdp

    weights, optim = fsdp.full_state(model, optimizer) if fsdp.is_sharded(model) else (None, None)
    states = gather_objects(rng_state(), d)
    if d.main:
        save_checkpoint(output, model, tokenizer, optimizer, scheduler, state, states, config_json, keep=keep,
                        weights=weights, optimizer_state=optim, extra=extra)
    barrier(d)


def load_trainer_state(path: str | Path) -> TrainerState:
    return TrainerState(**json.loads((Path(path) / STATE_FILE).read_text()))


def load_training_state(path: str | Path, optimizer, scheduler, rank: int, model=None) -> TrainerState:
    """Restore optimizer, scheduler and this rank's RNG from a checkpoint; returns the loop position. Pass the
    `model` when it is sharded: rank 0 reads the full optimizer state and each rank keeps its shard."""
    from trainers.core import fsdp

    path = Path(path)
    if model is not None and fsdp.is_sharded(model):
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False) if rank == 0 else None
        fsdp.load_optimizer(model, optimizer, saved)
    else:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    states = torch.load(path / "rng.pt", weights_only=False)
    set_rng_state(states[rank] if rank < len(states) else states[0])
    return load_trainer_state(path)
