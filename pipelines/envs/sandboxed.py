"""What the built-in environments share: one lazily opened `rewards.sandbox.Sandbox`, one in-box program, one
launch helper, one output-clipping rule and a concurrent `step_many` (docs/environments.md, "What runs in the
sandbox").

Each launch is a fresh box (nothing persists between launches), running `BOX_PROGRAM` (as /sandbox/box.py)
with the interpreter's `-I -S` flags (`-I` alone with `site_packages=True`). The program reads its job as JSON on stdin, lowers its own
rlimits (`Sandbox.rlimits`) before any untrusted code runs, says `started` on the result pipe, and then either
runs code blocks (`cells`: the python environment) or calls one function of a tool file (`call`: the tools
environment).
"""
from __future__ import annotations

import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rewards.sandbox import Sandbox, SandboxLimits, SandboxRun

STARTUP_SLACK_S = 3.0  # interpreter start-up on a loaded machine, on top of the code's own time
EXIT_OK, EXIT_ERROR, EXIT_REPLAY, EXIT_TIMEOUT = 0, 1, 2, 124  # the in-box program's exit codes (`cells` mode)

# Stdlib only; runs inside the sandbox. argv[1] is the result pipe's fd.
BOX_PROGRAM = r'''
import builtins, json, linecache, os, resource, signal, sys, traceback, types
job = json.loads(sys.stdin.buffer.read())
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
for name, value in job["rlimits"].items():
    limit = getattr(resource, name)
    hard = resource.getrlimit(limit)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(limit, (value, value))
channel = int(sys.argv[1])
os.write(channel, b'{"started": true}\n')
builtins.exit = builtins.quit = sys.exit  # what `site` adds; -S leaves them out

class BlockTimeout(BaseException):
    pass

def alarm(signum, frame):
    raise BlockTimeout()

signal.signal(signal.SIGALRM, alarm)

def run(source, filename, namespace):
    """exec `source` under a timer; None, or what it raised (a clean exit() is no error)."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # tracebacks show lines
    signal.setitimer(signal.ITIMER_REAL, job["timeout_s"])
    try:
        exec(compile(source, filename, "exec"), namespace)
        return None
    except SystemExit as exc:
        return None if exc.code in (None, 0) else exc
    except BaseException as exc:
        return exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

def described(exc):
    if isinstance(exc, BlockTimeout):
        return "TimeoutError: timed out after %g s" % job["timeout_s"]
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # drop run()'s own frame
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()

if job["mode"] == "cells":
    import random
    random.seed(0)  # every launch draws the same numbers: a replayed block sees what it saw the first time
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    out = os.dup(1)
    os.dup2(null, 1)
    os.dup2(null, 2)
    for i, source in enumerate(job["replay"]):
        error = run(source, "<block %d>" % (i + 1), main.__dict__)
        if error is not None:
            os.dup2(out, 1)
            print("[an earlier block failed when it was re-run to restore the state]\n" + described(error))
            os._exit(2)
    os.dup2(out, 1)
    os.dup2(out, 2)  # stderr joins stdout, in order (-u: neither is buffered)
    error = run(job["code"], "<block %d>" % (len(job["replay"]) + 1), main.__dict__)
    if error is not None:
        print(described(error), file=sys.stderr)
        os._exit(124 if isinstance(error, BlockTimeout) else 1)
    os._exit(0)

os.dup2(null, 1)  # a tool's prints are not shown: its return value is the answer
os.dup2(null, 2)
tools = types.ModuleType("tools")
tools.__builtins__ = builtins
sys.modules["tools"] = tools
error = run(job["source"], job["filename"], tools.__dict__)
if error is None:
    signal.setitimer(signal.ITIMER_REAL, job["timeout_s"])
    try:
        value = getattr(tools, job["name"])(**job["arguments"])
        signal.setitimer(signal.ITIMER_REAL, 0)
        content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
        reply = {"ok": content}
    except BaseException as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        error = exc
if error is not None:
    reply = {"timeout": True} if isinstance(error, BlockTimeout) else {"error": "%s: %s" % (type(error).__name__, error)}
data = json.dumps(reply).encode()
while data:
    data = data[os.write(channel, data):]
os._exit(0)
'''


class EnvSandboxError(RuntimeError):
    """A launch that never got to run the job (bwrap failed): the environment's fault, so the trajectory is null."""


def clip(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters: its beginning and its end are kept (a traceback's last line too),
    with a visible marker saying how much was cut from the middle."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return f"{text[:head]}\n[... truncated {len(text) - limit} chars]\n{text[len(text) - tail:]}"


class SandboxedEnv:
    """Base of the built-in environments: the sandbox options, the sandbox itself (opened on first use, dropped
    when pickled), `launch` and `step_many`."""

    def __init__(self, timeout_s: float = 5.0, max_output_chars: int = 1024, workers: int | None = None,
                 memory_mb: int = SandboxLimits.memory_mb, python: str | None = None, site_packages: bool = False,
                 allow_unsandboxed_code_execution: bool = False):
        if timeout_s <= 0 or max_output_chars < 1:
            raise ValueError("timeout_s must be > 0 and max_output_chars >= 1")
        self.timeout_s = float(timeout_s)
        self.max_output_chars = int(max_output_chars)
        self.workers = int(workers or len(os.sched_getaffinity(0)))
        self.memory_mb = int(memory_mb)
        self.python = python
        self.site_packages = bool(site_packages)
        self.allow_unsandboxed_code_execution = bool(allow_unsandboxed_code_execution)
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()

    # -- the sandbox: made on first use, never pickled ---------------------------------------------------------
    def open(self) -> Sandbox:
        """The sandbox, opened now if it is not yet (raises `SandboxUnavailable` with the fix when it cannot)."""
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(SandboxLimits(memory_mb=self.memory_mb), workers=self.workers,
                                        python=self.python,
                                        allow_unsandboxed_code_execution=self.allow_unsandboxed_code_execution)
            return self._sandbox

    def close(self) -> None:
        with self._lock:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_sandbox"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- running -------------------------------------------------------------------------------------------------
    def launch(self, job: dict, blocks: int = 1) -> SandboxRun:
        """Run BOX_PROGRAM on `job` in a fresh box; `blocks` pieces of code each get `timeout_s`. Raises
        EnvSandboxError when the box did not start."""
        sandbox = self.open()
        wall = self.timeout_s * blocks + STARTUP_SLACK_S
        job = {**job, "timeout_s": self.timeout_s, "rlimits": sandbox.rlimits(cpu_s=math.ceil(wall) + 1)}
        flags = ["-I", "-u"] if self.site_packages else ["-I", "-S", "-u"]
        run = sandbox.run(["{python}", *flags, "{job}/box.py", "{channel_fd}"], files={"box.py": BOX_PROGRAM},
                          stdin=json.dumps(job).encode(), wall_s=wall)
        if not run.channel.startswith(b'{"started": true}\n'):
            detail = run.extra.get("launch_error") or run.stderr.decode(errors="replace").strip()[-300:]
            raise EnvSandboxError(f"the sandbox did not start the job: {detail or f'exit {run.returncode}'}")
        return run

    def step_many(self, turns: list[str], states: list[Any]) -> list[Any]:
        """`step` on each (turn, state), `workers` at a time; an item whose step raised is that exception."""
        def one(pair):
            try:
                return self.step(*pair)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - one trajectory's environment error, not the batch's
                return exc

        if len(turns) != len(states):
            raise ValueError(f"step_many got {len(turns)} turns and {len(states)} states")
        if len(turns) <= 1:
            return [one(p) for p in zip(turns, states)]
        with ThreadPoolExecutor(min(self.workers, len(turns))) as pool:
            return list(pool.map(one, zip(turns, states)))
