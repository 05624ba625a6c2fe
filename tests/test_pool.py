"""The worker pool's failures are kept apart from the items': a stray kill costs nothing, a dead pool stops the
run (never a null in a finished shard), and modules in the user's working directory cannot shadow the package."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.core.dataset import load_table
from rewards.pool import PoolError, WorkerPool

PREFSMITH = str(Path(sys.executable).parent / "prefsmith")
B = "The answer is $\\boxed{%s}$."


def _slow_square(x):
    time.sleep(1.0)
    return x * x


def _kill_my_pool(x):
    """Kill the template (this worker's parent), wait until it is gone, then die too."""
    parent = os.getppid()
    if b"_template_main" in Path(f"/proc/{parent}/cmdline").read_bytes():  # never anything else
        os.kill(parent, signal.SIGKILL)
        while os.getppid() == parent:
            time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_workers_killed_under_items_rerun_them():
    with WorkerPool(workers=2, timeout=30) as pool:
        pool.map(_slow_square, [0, 0])  # warm
        pids = [w.pid for w in pool._workers]
        threading.Timer(0.3, lambda: [os.kill(p, signal.SIGKILL) for p in pids]).start()
        outs = pool.map(_slow_square, [2, 3, 4])
    assert [(o.status, o.value) for o in outs] == [("ok", 4), ("ok", 9), ("ok", 16)]
    assert pool.stats.retried == 2 and pool.stats.crashed == 2


def test_a_killed_pool_raises_and_the_next_map_starts_afresh():
    with WorkerPool(workers=1, timeout=30) as pool:
        with pytest.raises(PoolError, match="killed"):
            pool.map(_kill_my_pool, [1])
        assert pool._template is None and pool._workers == []
        assert [o.value for o in pool.map(_slow_square, [5])] == [25]


def test_a_template_that_cannot_start_is_a_pool_error():
    with WorkerPool(workers=1, timeout=5, preload=["no_such_module_here"]) as pool:
        with pytest.raises(PoolError, match="could not start"):
            pool.map(_slow_square, [1])


# ----------------------------------------------------------------------------------------------- the CLI

def _rows(n_simple: int = 4) -> list[dict]:
    """Rows the math reward can only decide in a worker (LaTeX against a decimal), and plain ones."""
    rows = [{"prompt": "half?", "completion": B % r"\frac{1}{2}", "answer": "0.5"},
            {"prompt": "root?", "completion": B % r"\sqrt{4}", "answer": "2"},
            {"prompt": "third?", "completion": B % r"\frac{2}{6}", "answer": "0.5"}]
    return rows + [{"prompt": f"{i}+1?", "completion": B % (i + 1), "answer": str(i + 1)} for i in range(n_simple)]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_label_math_from_a_folder_with_a_rewards_py(tmp_path):
    """`python -m rewards.pool` put the working directory first: a rewards.py there nulled every row."""
    for name in ("rewards", "pipelines", "trainers", "judges"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the user module was imported')\n")
    _write_jsonl(tmp_path / "rows.jsonl", _rows())
    proc = subprocess.run([PREFSMITH, "label", "--input", "rows.jsonl", "--output", "out", "--reward", "math",
                           "--workers", "1", "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = load_table(str(tmp_path / "out"))
    assert table.column("reward").to_pylist() == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert [i["math"] for i in table.column("reward_info").to_pylist()] == ["correct", "correct", "wrong"] + ["correct"] * 4


STALL = '''
import os, time
from pathlib import Path

def length(prompts, completions, **columns):
    flag = Path(os.environ["KILL_FLAG"])
    if flag.exists() and any("kill" in c for c in completions):
        flag.with_suffix(".waiting").touch()  # the test kills the whole pool now
        time.sleep(60)
    return [float(len(c)) for c in completions]
'''


def test_a_dead_pool_stops_the_stage_and_the_rerun_redoes_the_shard(tmp_path):
    """The pool (template and workers) is killed under a shard, again when it restarts: the stage stops with
    one line, the finished shard holds only real scores, and the same command then redoes the rest."""
    (tmp_path / "stall.py").write_text(STALL)
    flag, waiting = tmp_path / "kill.flag", tmp_path / "kill.waiting"
    flag.touch()
    rows = [{"prompt": f"p{i}", "completion": "kill" if i == 5 else "x" * i} for i in range(8)]
    _write_jsonl(tmp_path / "rows.jsonl", rows)
    cmd = [PREFSMITH, "label", "--input", "rows.jsonl", "--output", "out", "--reward", "stall.py:length",
           "--workers", "2", "--shard-size", "4", "--batch-size", "4", "--no-progress"]
    env = {**os.environ, "KILL_FLAG": str(flag)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kills, t0 = 0, time.time()
    while proc.poll() is None and time.time() - t0 < 120:
        if waiting.exists():
            waiting.unlink()
            for pid in _descendants(proc.pid):  # the template and every worker, all at once
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            kills += 1
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2 and kills == 2  # once is retried on a fresh pool; twice stops the run
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in stderr and len(errors) == 1, stderr
    assert errors[0].startswith("prefsmith label: error: stopped: the worker pool was killed")
    assert "1 of 2 shards are finished and kept; rerun the same command" in errors[0]
    # the finished shard holds only real scores; the shard the dead pool hit was not written
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / ".shards").iterdir()) == ["part-00000.done"]
    first = pq.read_table(out / "data" / "part-00000.parquet")
    assert first.column("reward").to_pylist() == [0.0, 1.0, 2.0, 3.0]
    flag.unlink()  # the pool can live again: the same command finishes the run
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "1/2 shards already done" in rerun.stderr
    assert load_table(str(out)).column("reward").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 6.0, 7.0]
