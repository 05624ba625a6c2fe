"""Executors map a stage over shards and hand each finished shard back to the runner, which writes it.

    local   in this process, shard after shard (the default; what every stage did before executors existed)
    ray     on a Ray cluster, or on a local Ray started for the run: one long-lived actor per replica
            (a model on its GPU, a reward pool on its CPUs), shards dealt to whichever replica is free

An executor never writes files, plans shards or touches markers: that is the runner's job
(pipelines/core/runner.py), so resume, fingerprints and the manifest are the same whatever runs the shards.
The `Executor` protocol and the `ShardTask` it is handed live with the stage (pipelines/core/stage.py), so no
executor imports the runner.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.core.stage import Executor, ShardTask  # noqa: F401 (ShardTask: re-exported, hygiene/dedup.py)
from pipelines.errors import UserError


@dataclass
class ExecutorConfig:
    kind: str = "local"  # local | ray
    address: str | None = None  # ray: auto (join a running cluster, else start a local one) or HOST:PORT
    workers: int | None = None  # ray: replicas (actors); default: as many as the cluster's free resources hold
    num_cpus: float | None = None  # ray: CPUs per replica (default: the stage's own, e.g. 1)
    num_gpus: float | None = None  # ray: GPUs per replica (default: the stage's own: 1 for vllm, else 0)


KINDS = ("local", "ray")


def make_executor(cfg: ExecutorConfig | str | None = None) -> Executor:
    if cfg is None or isinstance(cfg, str):
        cfg = ExecutorConfig(kind=cfg or "local")
    if cfg.kind == "local":
        from pipelines.executors.local import LocalExecutor

        return LocalExecutor()
    if cfg.kind == "ray":
        from pipelines.executors.ray import RayExecutor

        return RayExecutor(address=cfg.address, workers=cfg.workers, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    raise UserError(f"--executor {cfg.kind!r}: expected one of {', '.join(KINDS)}")


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("executor (where the shards run; see docs/executors.md)")
    g.add_argument("--executor", choices=KINDS, default="local",
                   help="local: this process (default); ray: a Ray cluster, or a local Ray when none is running")
    g.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="ray: the cluster to join (default auto: RAY_ADDRESS or a running local cluster, else "
                        "start one on this machine)")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="ray: replicas of the stage (default: as many as the free CPUs/GPUs hold)")
    g.add_argument("--num-cpus-per-worker", type=float, default=None, metavar="C",
                   help="ray: CPUs each replica reserves (reward pools size themselves to it)")
    g.add_argument("--num-gpus-per-worker", type=float, default=None, metavar="G",
                   help="ray: GPUs each replica reserves (default 1 for --engine vllm, else 0)")


def executor_config(args: argparse.Namespace) -> ExecutorConfig:
    for flag, value in (("--ray-workers", args.ray_workers), ("--num-cpus-per-worker", args.num_cpus_per_worker)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be > 0, got {value}")
    if args.num_gpus_per_worker is not None and args.num_gpus_per_worker < 0:
        raise UserError(f"--num-gpus-per-worker must be >= 0, got {args.num_gpus_per_worker}")
    return ExecutorConfig(kind=args.executor, address=args.ray_address, workers=args.ray_workers,
                          num_cpus=args.num_cpus_per_worker, num_gpus=args.num_gpus_per_worker)
