"""How many CPU threads torch uses: the one implementation behind every `--threads` (docs/engines.md, Threads).

    apply_threads(None)     # auto: what this machine can give now; sets torch's intra-op (and inter-op) threads
    apply_threads(2)        # exactly 2

The rule (`resolve_threads`):

1. `--threads N` (N >= 1): N.
2. `auto` (the default; `0` means the same): `OMP_NUM_THREADS` when it is set, a launcher's or the user's own
   choice (torchrun sets 1 per process); else `auto_threads`: the cores this process may use (its CPU affinity,
   capped by a cgroup CPU quota) minus the load other processes put on them, at least 1. That load is the
   1-minute load average, or the cores kept busy during a half-second sample while this process sleeps when that
   is lower: the average still counts, for a minute, a command that has just finished (`other_load`).

Torch's own default is one thread per physical core, busy or not; on a shared machine its OpenMP threads then
spin waiting for cores that other processes hold, and generation gets slower than with fewer threads.
`auto` is decided once per process, before its own work would count as load, and reused.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import time
from pathlib import Path

AUTO = "auto"
HELP = ("torch CPU threads: N, or auto (default): OMP_NUM_THREADS when set, else the usable cores minus the load "
        "of other processes, at least 1 (docs/engines.md, Threads)")


def auto_threads(cores: int, load: float, online: int | None = None) -> int:
    """Threads that fit what is free now: `cores` usable by this process, minus `load` (the machine-wide
    1-minute load average) scaled to those cores' share of the `online` cores (all of them when None),
    rounded half up; at least 1.

        auto_threads(2, 0.3) == 2;  auto_threads(2, 1.1) == 1;  auto_threads(8, 32.0, online=64) == 4
    """
    online = max(cores, online or cores)
    busy = math.floor(load * cores / online + 0.5)
    return max(1, cores - busy)


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """This process's cgroup CPU quota in cores (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`);
    None when there is none or it cannot be read."""
    root = Path(root)
    own: dict[str, str] = {}  # controller ("" for v2) -> this process's cgroup path
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path.lstrip("/")
    except (OSError, ValueError):
        pass
    for folder in dict.fromkeys([root / own.get("", ""), root]):  # v2: one hierarchy
        try:
            quota, period = (folder / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        except (OSError, ValueError):
            continue
    for folder in dict.fromkeys([root / "cpu" / own.get("cpu", ""), root / "cpu"]):  # v1
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            return None if quota <= 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
    return None


def cpu_busy(seconds: float = 0.5) -> float | None:
    """Cores kept busy machine-wide over the next `seconds` (/proc/stat), while this process sleeps: the load of
    the others as it is now. None where /proc/stat cannot be read."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)

    try:
        busy0, total0 = read()
        time.sleep(seconds)
        busy1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)


def other_load() -> float:
    """The load of other processes, machine-wide: the 1-minute load average, or `cpu_busy()` when lower. The
    average lags both ways; the lower of the two forgets a process that has ended (the previous command) at once
    and still sees a steady one."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    now = cpu_busy()
    return min(x for x in (load, now, float(os.cpu_count() or 1)) if x is not None)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded down, at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return cores if quota is None else max(1, min(cores, int(quota)))


@functools.cache
def _auto() -> int:
    """Decided once per process: later, this process's own work would count as others' load."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return auto_threads(usable_cores(), other_load(), os.cpu_count())


def resolve_threads(value: int | None) -> int:
    """`--threads` -> a thread count, by the rule above: N >= 1 is N; None (or 0) is auto."""
    if value is None or value == 0:
        return _auto()
    if value < 0:
        raise ValueError(f"threads must be >= 1 (or None for auto), got {value}")
    return int(value)


def apply_threads(value: int | None) -> int:
    """Set torch's intra-op threads to `resolve_threads(value)` (process-wide) and return the number. The
    inter-op pool gets the same number when torch still allows it: only before any parallel work started."""
    import torch

    n = resolve_threads(value)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # inter-op work already ran, or it was set before: torch refuses, and that is fine
        pass
    return n


def parse_threads(text: str) -> int | None:
    """`--threads` as typed: `auto` (or 0) -> None, N >= 1 -> N; anything else is an argparse error."""
    if text.strip().lower() == AUTO:
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of threads >= 1 or `auto`, got {text!r}")
    return n or None


def add_threads_argument(parser) -> None:
    """`--threads` on a parser or an argument group: the same flag, type and help on every command."""
    parser.add_argument("--threads", type=parse_threads, default=None, metavar="N|auto", help=HELP)


def explain() -> str:
    """What auto would pick here and now, and why (`python -m pipelines.core.threads`)."""
    env = os.environ.get("OMP_NUM_THREADS")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load, now = (os.getloadavg()[0] if hasattr(os, "getloadavg") else None), cpu_busy()
    return (f"auto: {resolve_threads(None)} thread(s); OMP_NUM_THREADS {env or 'unset'}, affinity {affinity} of "
            f"{os.cpu_count()} cores, cgroup quota {cgroup_cpu_limit() or 'none'}, 1-minute load "
            f"{'?' if load is None else f'{load:.2f}'}, cores busy now {'?' if now is None else f'{now:.2f}'}")


if __name__ == "__main__":
    print(explain())
