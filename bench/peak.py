"""Run a command as a child process and measure its peak resident memory (VmHWM, polled from /proc): what the
bench scripts that compare whole runs (bench/learning.py, bench/grpo_memory.py) report as peak RSS."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path


def run_with_peak(cmd: list[str], poll_s: float = 0.2, **popen) -> tuple[subprocess.Popen, int]:
    """Run `cmd` to its end; returns (the finished process, its peak RSS in bytes)."""
    proc = subprocess.Popen(cmd, **popen)
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) * 1024)
        except (OSError, IndexError):
            pass
        time.sleep(poll_s)
    return proc, peak
