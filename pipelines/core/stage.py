"""The one shape every sharded stage has, so any executor can run any stage.

    class MyStage(Stage):
        name = "my-stage"          # recorded in the manifest
        shard_size = 256           # default input rows per shard (the unit of resume and of parallelism)
        def __init__(self, cfg): self.cfg = cfg          # config only: cheap, picklable
        def config(self): return asdict(self.cfg)        # what changes the output (the fingerprint)
        def setup(self): self.model = load(...)          # heavy, on first use, in the process that runs it
        def process(self, rows, shard): return [...]     # rows -> rows for one shard
        def close(self): ...                             # free what setup made

`process` returns the shard's output rows, or a dict `{"rows": [...], "removed": [...], "stats": {...}}`: other
list-valued keys are side datasets written to `OUTPUT/<key>/data/`, and `stats` holds numbers the runner sums over
shards into the manifest (`manifest["stats"]`), so a figure (tokens generated, rows that errored) is right however
many processes or machines ran the shards. A stage keeps no state that another shard's output depends on: an
executor may run shards in any process, in any order, and run one again after a crash.

The runner (pipelines/core/runner.py) owns planning, fingerprints, markers, writes and the manifest; executors
(pipelines/executors/) only call `stage(rows, shard)` somewhere and hand the result back. What the two share —
the `Shard` a stage is called with, the `ShardTask` an executor is handed and the `Executor` protocol — lives
here, with the stage, so executors never import the runner back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Protocol

import pyarrow as pa


@dataclass
class Shard:
    """Where the rows a stage is called with sit in the whole input."""

    index: int
    start: int  # index of the shard's first input row in the whole input
    tick: Callable[[int], None] = lambda n: None  # advance the progress bar by n input rows


@dataclass
class ShardTask:
    """One shard still to run, as the runner hands it to an executor."""

    index: int
    start: int  # position of the shard's first row in the whole input
    table: pa.Table  # the shard's input rows


class Executor(Protocol):
    """Where shards run (pipelines/executors/): it maps a stage over tasks and never writes files."""

    name: str

    def map(self, stage: Any, tasks: Iterable[ShardTask],
            tick: Callable[[int], None]) -> Iterator[tuple[ShardTask, Any, float]]:
        """Run `stage` on every task; yield `(task, output, seconds the shard took)` as each finishes, in any
        order; call `tick(rows)` as input rows finish (for the progress bar)."""

    def close(self) -> None: ...


class Stage:
    name: ClassVar[str] = "stage"
    shard_size: ClassVar[int] = 256
    group_by: ClassVar[str | None] = None  # a column whose groups never split across shards (prompt_id)
    # resources one replica needs on a cluster; the CLI's --num-cpus-per-worker / --num-gpus-per-worker override
    num_cpus: ClassVar[float] = 1.0
    num_gpus: ClassVar[float] = 0.0

    _ready: bool = False

    def config(self) -> dict[str, Any]:
        """The settings that change the output; they go into the fingerprint (resume refuses another config)."""
        return {}

    def required(self) -> list[str]:
        """Columns that must exist and hold no nulls (checked before any work)."""
        return []

    def present(self) -> list[str]:
        """Columns that must exist but may be null."""
        return []

    def setup(self) -> None:
        """Heavy set-up (a model, a worker pool, a sandbox); runs once, on first use, where the stage runs."""

    def process(self, rows: list[dict], shard: Shard) -> list[dict] | dict[str, Any]:
        raise NotImplementedError

    def check(self, stats: dict[str, float]) -> None:
        """Called in the driver after each shard is written, with the stats summed over every finished shard;
        raise (a UserError) to stop the run, keeping the finished shards."""

    def close(self) -> None:
        """Free what `setup` made. The stage may be used again afterwards (setup runs again)."""

    def __call__(self, rows: list[dict], shard: Shard) -> list[dict] | dict[str, Any]:
        if not self._ready:
            self.setup()
            self._ready = True
        return self.process(rows, shard)

    def shutdown(self) -> None:
        if self._ready:
            self.close()
            self._ready = False

    def __getstate__(self) -> dict:
        # what a stage made in setup (models, pools, sandboxes) never travels: the receiver sets up its own
        state = dict(self.__dict__)
        for key in self._runtime:
            state.pop(key, None)
        state.pop("_ready", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for key in self._runtime:
            self.__dict__.setdefault(key, None)

    # attribute names that `setup` fills and pickling drops
    _runtime: ClassVar[tuple[str, ...]] = ()


class FunctionStage(Stage):
    """A plain `fn(rows, shard)` as a stage (the runner's low-level API and tests)."""

    def __init__(self, name: str, fn: Callable[[list[dict], Shard], Any], config: dict | None = None,
                 required: list[str] = (), present: list[str] = (), shard_size: int = 256,
                 group_by: str | None = None):
        self.name, self.fn, self._config = name, fn, dict(config or {})
        self._required, self._present = list(required), list(present)
        self.shard_size, self.group_by = shard_size, group_by

    def config(self) -> dict:
        return self._config

    def required(self) -> list[str]:
        return self._required

    def present(self) -> list[str]:
        return self._present

    def process(self, rows, shard):
        return self.fn(rows, shard)
