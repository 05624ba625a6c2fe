"""The Ray executor: a stage's shards on a Ray cluster (or on a local Ray started for the run).

How it uses Ray (tasks and actors, not Ray Data):
- one **actor per replica** holds a copy of the stage and sets it up once (a vLLM engine on its `num_gpus`, an
  hf model, a math worker pool or code sandboxes sized to its `num_cpus`), then runs shard after shard: a
  model loads once per replica, not once per shard;
- the driver deals shards to idle replicas (`ray.wait` on the calls in flight, two per replica so a replica
  never waits for the driver) and hands each finished shard back to the runner, which writes it and its marker
  exactly as the local executor's;
- actors are created with `max_restarts=-1, max_task_retries=-1`: when a replica's process dies (a node lost,
  an OOM kill, `kill -9`), Ray starts a new one and re-runs the calls it had in flight. A shard's output is
  written only by the driver, only once it has come back whole, and under its fixed name, so a retry can
  neither duplicate nor lose rows;
- a driver killed mid-run leaves the markers of every shard written; the same command continues from them.

Why not Ray Data: its `map_batches` with an actor pool gives the same replicas, but its blocks are not our
shards, and the runner's guarantees (a shard is the unit of resume, named, marked and fingerprinted) need the
driver to see each shard's output whole. Ray Data is still what a user gets by reading our Parquet output
(`ray.data.read_parquet(DIR/data)`).
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from pipelines.core.stage import Shard, ShardTask
from pipelines.errors import UserError

IN_FLIGHT_PER_REPLICA = 2


def connect(address: str | None = None) -> dict:
    """Join the cluster at `address` (`auto`/None: RAY_ADDRESS or a running local cluster), else start a local
    Ray on this machine's CPUs. Returns the cluster's total resources."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'prefsmith[ray]' (ray[data])") from None
    if not ray.is_initialized():
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
        explicit = address not in (None, "", "auto") or os.environ.get("RAY_ADDRESS")
        try:
            if explicit:
                ray.init(address=address if address not in (None, "", "auto") else None, runtime_env=env,
                         log_to_driver=False)
            else:
                try:
                    ray.init(address="auto", runtime_env=env, log_to_driver=False)
                except ConnectionError:
                    ray.init(num_cpus=_local_cpus(), include_dashboard=False, runtime_env=env, log_to_driver=False)
        except ConnectionError as e:
            raise UserError(f"--ray-address {address or os.environ.get('RAY_ADDRESS')}: cannot join a Ray cluster "
                            f"there ({e}); start one with `ray start --head`, or leave --ray-address out to run a "
                            "local Ray") from None
    return ray.cluster_resources()


def _local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _Replica:
    """The body of one actor: a stage, set up on its first shard, run on every shard dealt to it."""

    def __init__(self, stage: Any, num_cpus: float):
        self.stage = stage
        # reward pools and sandboxes size themselves to the CPUs Ray reserved, not to the whole node
        if hasattr(stage, "cpus"):
            stage.cpus = max(1, int(num_cpus))

    def run(self, index: int, start: int, table) -> Any:
        from pipelines.core import dataset as ds

        t0 = time.time()
        out = self.stage(table.to_pylist(), Shard(index=index, start=start))
        # rows travel back as Arrow (one buffer per column through the object store, not pickled dicts)
        if isinstance(out, dict):
            out = {k: (v if k == "stats" else ds.rows_to_table(v)) for k, v in out.items()}
        else:
            out = ds.rows_to_table(out)
        return out, time.time() - t0

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        shutdown = getattr(self.stage, "shutdown", None)
        if shutdown is not None:
            shutdown()


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, num_cpus: float | None = None,
                 num_gpus: float | None = None):
        self.address, self.workers, self.num_cpus, self.num_gpus = address, workers, num_cpus, num_gpus
        self.replicas: list[Any] = []  # the actors of the stage now running (tests kill one)

    def resources(self, stage: Any) -> tuple[float, float]:
        cpus = self.num_cpus if self.num_cpus is not None else float(getattr(stage, "num_cpus", 1.0))
        gpus = self.num_gpus if self.num_gpus is not None else float(getattr(stage, "num_gpus", 0.0))
        return cpus, gpus

    def _replica_count(self, total: dict, cpus: float, gpus: float, n_tasks: int) -> int:
        if self.workers is not None:
            return max(1, min(self.workers, n_tasks))
        fits = int(total.get("CPU", 1) // cpus) if cpus > 0 else n_tasks
        if gpus > 0:
            have = total.get("GPU", 0)
            if have < gpus:
                raise UserError(f"the stage needs {gpus:g} GPU per replica and the Ray cluster has {have:g}; "
                                "pass --num-gpus-per-worker 0 to run it on CPUs")
            fits = min(fits, int(have // gpus))
        return max(1, min(fits, n_tasks))

    def map(self, stage: Any, tasks: Iterable[ShardTask],
            tick: Callable[[int], None]) -> Iterator[tuple[ShardTask, Any, float]]:
        import ray

        tasks = list(tasks)
        if not tasks:
            return
        total = connect(self.address)
        cpus, gpus = self.resources(stage)
        if gpus > 0 and self.num_gpus is None and not total.get("GPU"):
            gpus = 0.0  # the stage's default asks for a GPU (vLLM) and the cluster has none: its CPU build runs
        n = self._replica_count(total, cpus, gpus, len(tasks))
        actor = ray.remote(_Replica).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1,
                                             max_concurrency=1)
        self.replicas = [actor.remote(stage, cpus) for _ in range(n)]
        queue = deque(tasks)
        pending: dict[Any, tuple[ShardTask, int]] = {}
        load = [0] * n
        try:
            while queue or pending:
                for r in range(n):
                    while queue and load[r] < IN_FLIGHT_PER_REPLICA:
                        task = queue.popleft()
                        ref = self.replicas[r].run.remote(task.index, task.start, task.table)
                        pending[ref] = (task, r)
                        load[r] += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                task, r = pending.pop(done[0])
                load[r] -= 1
                try:
                    out, seconds = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else e) from None
                tick(task.table.num_rows)
                yield task, out, seconds
        finally:
            self._stop()

    def _stop(self) -> None:
        import ray

        for a in self.replicas:
            try:
                ray.get(a.close.remote(), timeout=60)
            except Exception:  # a replica that cannot close cleanly is killed below anyway
                pass
            ray.kill(a)
        self.replicas = []

    def close(self) -> None:
        self._stop()
