"""The local executor: every shard in this process, in order. The stage sets itself up on the first shard
and is closed when the run ends."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

from pipelines.core.stage import Shard, ShardTask


class LocalExecutor:
    name = "local"

    def __init__(self) -> None:
        self._stages: list[Any] = []

    def map(self, stage: Any, tasks: Iterable[ShardTask],
            tick: Callable[[int], None]) -> Iterator[tuple[ShardTask, Any, float]]:
        if stage not in self._stages:
            self._stages.append(stage)
        for task in tasks:
            ticked = [0]

            def count(n: int, _t=ticked) -> None:
                _t[0] += n
                tick(n)

            t0 = time.time()
            out = stage(task.table.to_pylist(), Shard(index=task.index, start=task.start, tick=count))
            tick(max(0, task.table.num_rows - ticked[0]))  # a stage that never ticked finishes its shard at once
            yield task, out, time.time() - t0

    def close(self) -> None:
        for stage in self._stages:
            shutdown = getattr(stage, "shutdown", None)
            if shutdown is not None:
                shutdown()
        self._stages.clear()
