"""Attacks the sandbox must contain. Each runs the attack as row 0 and a correct program as row 1 of one batch:
the host must be unchanged afterwards and row 1 must still score 1.0."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from rewards.code import code_results
from rewards.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

GOOD = "```python\ndef solve():\n    return 1\n```"
TESTS = ["assert solve() == 1"]
# forks up to 100 sleeping children; solve() says how many the process limit let it start
FORKER = """
import os, time
started = 0
for _ in range(100):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        started += 1
    except OSError:
        break
def solve():
    return started
"""


def run_pair(attack: str, tests=TESTS, **kwargs):
    """Score [attack, correct program] in one batch with one worker, so row 1 runs in the same sandbox slot
    right after the attack; returns row 0's result after checking row 1 scored normally."""
    kwargs.setdefault("timeout_s", 2.0)
    results = code_results(["p", "p"], [attack, GOOD], tests=[tests, TESTS], workers=1, **kwargs)
    assert results[1].score == 1.0, results[1]
    assert results[1].info["statuses"] == ["passed"]
    return results[0]


def sandbox_processes() -> list[int]:
    """Host processes still running our harness (there must be none once a batch returns)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"/sandbox/harness.py" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_cannot_write_or_delete_host_files(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("original")
    attack = f"""
import os, shutil
SENT = {str(sentinel)!r}
escaped = []
for action in (lambda: open(SENT, "w").write("pwned"), lambda: os.remove(SENT),
               lambda: shutil.rmtree({str(tmp_path)!r}), lambda: open("/usr/pwned", "w").write("x"),
               lambda: open("/sandbox/pwned", "w").write("x"), lambda: open("/etc/pwned", "w").write("x")):
    try:
        action()
        escaped.append(action)
    except OSError:
        pass
open("/tmp/scratch.txt", "w").write("private temp dir is writable")
def solve():
    return 1 if not escaped and open("/tmp/scratch.txt").read().startswith("private") else 0
"""
    result = run_pair(attack)
    assert result.score == 1.0, result  # every write outside /tmp failed inside the sandbox, /tmp worked
    assert sentinel.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel.txt"]
    assert not Path("/usr/pwned").exists() and not Path("/etc/pwned").exists()


def test_cannot_read_host_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    attack = f"""
import os
def read(path):
    try:
        return open(path).read()
    except OSError:
        return None
leaked = [read({str(secret)!r}), read("/etc/shadow"), read("/etc/passwd"), read({str(Path.cwd() / "pyproject.toml")!r})]
visible = os.path.exists({str(tmp_path)!r}) or os.path.exists("/work") or os.path.exists("/home")
def solve():
    return 1 if leaked == [None, None, None, None] and not visible else 0
"""
    assert run_pair(attack).score == 1.0


def test_no_network_even_to_host_loopback():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    connections = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                connections.append(conn.recv(100))
                conn.close()
            except (socket.timeout, OSError):
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    attack = f"""
import socket
interfaces = [name for _, name in socket.if_nameindex()]
s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
s.sendall(b"escaped")
def solve():
    return 1
"""
    try:
        result = run_pair(attack)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert connections == []
    assert result.score == 0.0
    assert result.info["statuses"] == ["runtime_error"]
    assert "ConnectionRefusedError" in result.info["details"][0]


def test_only_loopback_interface():
    attack = """
import socket
names = sorted(name for _, name in socket.if_nameindex())
def solve():
    return 1 if names == ["lo"] else 0
"""
    assert run_pair(attack).score == 1.0


def test_fork_bomb_is_contained():
    attack = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    result = run_pair(attack, timeout_s=1.0)
    assert result.score == 0.0 and result.info["statuses"] == ["timeout"]
    assert sandbox_processes() == []


def test_process_limit_is_enforced():
    limits = SandboxLimits(max_procs=16)
    result = code_results(["p"], [FORKER], tests=[["assert solve() < 16", "assert solve() > 5"]], limits=limits,
                          timeout_s=5.0)[0]
    assert result.score == 1.0, result
    assert sandbox_processes() == []


def test_memory_bomb_is_contained():
    attack = """
blocks = []
while True:
    blocks.append(bytearray(50 * 1024 * 1024))
"""
    result = run_pair(attack, limits=SandboxLimits(memory_mb=512))
    assert result.score == 0.0 and result.info["statuses"] == ["memory_limit"]


def test_infinite_loop_ignoring_alarm_is_killed_by_wall_clock():
    attack = """
import signal
signal.signal(signal.SIGALRM, signal.SIG_IGN)
def solve():
    while True:
        pass
"""
    result = run_pair(attack, tests=["assert 1 == 1", "assert solve() == 1", "assert 2 == 2"], timeout_s=1.0)
    # the judge times each test in its own process, which the program cannot reach: the stuck submission is
    # killed and the next test runs against a fresh one
    assert result.info["statuses"] == ["passed", "timeout", "passed"]
    assert result.info["details"][1] == "time limit"
    assert result.score == 0.0


def test_crash_in_one_test_does_not_sink_the_rest():
    # a test that kills its own process is recorded, and the tests after it run in a fresh process
    program = "import os\ndef solve(x):\n    if x == 2:\n        os._exit(3)\n    return x\n"
    tests = ["assert solve(1) == 1", "assert solve(2) == 2", "assert solve(3) == 3", "assert solve(4) == 5"]
    result = code_results(["p"], [program], tests=[tests], fraction=True)[0]
    assert result.info["statuses"] == ["passed", "runtime_error", "passed", "failed"]
    assert result.score == 0.5


@pytest.mark.parametrize("attack, statuses", [
    # the parent is the PID namespace's init, which ignores signals from inside: the program goes on, correct
    ("import os\nos.kill(os.getppid(), 9)\ndef solve():\n    return 1\n", ["passed"]),
    # kill -1 reaches every process in the namespace except init and the caller: nothing of the host
    ("import os, subprocess\np = subprocess.Popen(['sleep', '30'])\nos.kill(-1, 9)\n"
     "def solve():\n    return 1 if p.wait() == -9 else 0\n", ["passed"]),
    # killing every pid it can see includes itself: the row fails, the batch goes on
    ("import os\nfor pid in range(1, 400):\n    try:\n        os.kill(pid, 9)\n    except OSError:\n        pass\n",
     ["runtime_error"]),
])
def test_killing_parent_or_everything_stays_inside(attack, statuses):
    import subprocess
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        result = run_pair(attack)
        assert bystander.poll() is None  # a host process of the same user survived
    finally:
        bystander.kill()
        bystander.wait()
    assert result.info["statuses"] == statuses, result
    assert sandbox_processes() == []


def test_stdout_flood_is_capped_and_flagged():
    # with asserts the program's stdout goes nowhere: a flood only uses up its own time
    attack = "def solve():\n    while True:\n        print('x' * 1000)\n"
    result = run_pair(attack, limits=SandboxLimits(output_bytes=64 * 1024))
    assert result.score == 0.0
    assert result.info["statuses"] == ["timeout"]
    with Sandbox(SandboxLimits(output_bytes=1000)) as sandbox:
        run = sandbox.run(["{python}", "-I", "-S", "-c", "while True: print('y' * 100)"], {}, wall_s=10)
    assert run.truncated and len(run.stdout) == 1000 and run.stdout.startswith(b"y" * 100)


def test_stdio_flood_fails_the_case():
    attack = "while True:\n    print('x' * 1000)\n"
    results = code_results(["p", "p"], [attack, "print(input()[::-1])"],
                           tests=[[{"input": "ab", "output": "ba"}]] * 2, timeout_s=2.0)
    assert results[0].score == 0.0 and results[0].info["truncated"] is True
    assert results[1].score == 1.0


def test_no_daemon_survives_and_no_late_write(tmp_path):
    late = tmp_path / "late.txt"
    attack = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1.5)
        for path in ({str(late)!r}, "/tmp/late.txt"):
            try:
                open(path, "w").write("still alive")
            except OSError:
                pass
        time.sleep(30)
    os._exit(0)
def solve():
    return 1
"""
    result = run_pair(attack)
    assert result.score == 1.0  # the program itself is correct; its daemon is the problem
    assert sandbox_processes() == []
    time.sleep(2.0)
    assert not late.exists()
    assert sandbox_processes() == []


def test_refuses_without_isolation_and_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    with pytest.raises(SandboxUnavailable, match="install_sandbox.sh"):
        code_results(["p"], [GOOD], tests=[TESTS])
    with pytest.raises(SandboxUnavailable, match="allow_unsandboxed_code_execution"):
        Sandbox()


def test_unsandboxed_needs_the_flag_and_then_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    results = code_results(["p"], [GOOD], tests=[TESTS], allow_unsandboxed_code_execution=True)
    assert results[0].score == 1.0


def test_program_cannot_tamper_with_the_judge():
    # the program runs in a child of the judge (PID 1 of the box): it must not read the judge's memory or pipes,
    # and stopping it is not possible from inside
    attack = """
import os
server = os.getppid()
assert server == 1
reached = []
for path in (f"/proc/{server}/mem", f"/proc/{server}/fd/0", f"/proc/{server}/environ"):
    try:
        open(path, "rb").read(1)
        reached.append(path)
    except OSError:
        pass
def solve():
    return 1 if not reached else 0
"""
    assert run_pair(attack).score == 1.0
    stopper = "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\ndef solve():\n    return 1\n"
    results = code_results(["p"] * 3, [stopper, GOOD, GOOD], tests=[TESTS] * 3, workers=1, timeout_s=1.0)
    assert [r.score for r in results] == [1.0, 1.0, 1.0]  # init ignores SIGSTOP from inside; nothing is lost


def test_nothing_leaks_between_rows_sharing_a_sandbox():
    first = """
import os, subprocess
open("/tmp/left_behind", "w").write("row 0")
open("/dev/shm/left_behind", "w").write("row 0")
subprocess.Popen(["sleep", "60"], start_new_session=True)
def solve():
    return 1
"""
    second = """
import os
me = os.getpid()
others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me))
files = os.listdir("/tmp") + os.listdir("/dev/shm")
def solve():
    return 1 if others == [] and files == [] else (others, files)
"""
    results = code_results(["p", "p"], [first, second], tests=[TESTS, TESTS], workers=1)
    assert [r.score for r in results] == [1.0, 1.0], results
    assert sandbox_processes() == []


def test_file_size_and_tmp_space_are_capped():
    program = """
import errno, os
def write(path, size):
    try:
        with open(path, "wb") as f:
            f.write(b"x" * size)
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
big = write("/tmp/big", 8 * 1024 * 1024)       # over the 4 MiB file-size limit
os.remove("/tmp/big")
small = [write(f"/tmp/small{i}", 3 * 1024 * 1024) for i in range(4)]   # the 8 MiB tmpfs fills up
def solve():
    return (big, small)
"""
    limits = SandboxLimits(file_size_mb=4, tmp_mb=8)
    result = code_results(["p"], [program], tests=[["assert solve() == ('EFBIG', ['ok', 'ok', 'ENOSPC', 'ENOSPC'])"]],
                          limits=limits)[0]
    assert result.score == 1.0, result




@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="the fallback is for root without a pids cgroup, with an interpreter uid 65534 can read")
def test_root_without_pids_cgroup_drops_privileges_and_still_caps_processes():
    limits = SandboxLimits(max_procs=16)
    with Sandbox(limits, workers=1, python="/usr/bin/python3", pids_cgroup=False) as sandbox:
        assert sandbox.rlimits()["RLIMIT_NPROC"] == 18
        results = code_results(["p", "p"], [FORKER, GOOD], tests=[["assert 5 < solve() < 19"], TESTS],
                               sandbox=sandbox)
        again = code_results(["p"], [GOOD], tests=[TESTS], sandbox=sandbox)  # the same sandbox, reused
    assert [r.score for r in results] == [1.0, 1.0], results
    assert again[0].score == 1.0
    assert sandbox_processes() == []
