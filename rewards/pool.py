"""Run a picklable function on many items in worker processes, each item under a hard wall-clock limit.

Why processes and not threads: checkers such as math-verify and sympy can spin in C code that no signal or
thread can interrupt (`9^9^9^9^9`), and math-verify's own timeout needs `signal.alarm` on a main thread. A
slow item first gets a soft timeout (a `SIGALRM` raised inside the worker, which keeps the worker); if the
worker does not answer by the hard deadline it is killed and replaced. Either way the item reports
`timeout` and every other item is unaffected.

    with WorkerPool(workers=2, timeout=5.0, preload=["rewards.math"]) as pool:
        outcomes = pool.map(my_module.check, items)   # list[Outcome], in input order

How workers start: one template process (a plain child interpreter, so a pool can be opened from any thread
and from inside a daemonic process) imports `preload`, runs `warmup` once, and then forks each worker on
request. Workers start warm and cheap, and replacing a killed one costs a fork, not a fresh interpreter. The
template is single-threaded, so forking it is safe. It starts in isolated mode (`python -I`: neither the
working directory nor PYTHONPATH is put first on its path), imports this package's top-level names from the
folder that holds them, and only then takes the parent's `sys.path`: a `rewards.py` or `pipelines.py` in the
directory a user runs from cannot shadow the package (user reward modules there are still found).

Two kinds of failure, kept apart:
- an item's own: it raised (`error`), ran out of time (`timeout`), or killed its worker twice (`crashed`: a
  worker that dies under an item is replaced and the item runs once more, so one stray kill costs nothing);
- the pool's: the template cannot start, a worker cannot start, or the template is dead when an item's
  worker dies a second time (the whole pool was killed). `map` raises `PoolError`, never an outcome; the pool
  resets itself, so a later `map` starts afresh. Callers let it stop the run: it is not a fact about the data.

`fn` must be importable by module name in the child (a module-level function, not a lambda or a function
defined in `__main__` of a script run as a file).
"""
from __future__ import annotations

import atexit
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Sequence

# Soft timeout fires at this fraction of the item's limit; the hard kill at the limit itself.
SOFT_FRACTION = 0.8
READY_TIMEOUT_S = 120.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder that holds this package
PACKAGES = ("rewards", "judges", "pipelines", "trainers")  # the distribution's top-level names, bound first

# The template's entry: argv is ROOT, the parent's sys.path (os.pathsep-joined), the control fd, preload...
_BOOT = """
import sys, os, importlib
root, path = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
for name in sys.argv[3].split(","):
    if os.path.isfile(os.path.join(root, name, "__init__.py")):
        importlib.import_module(name)
sys.path[:] = path.split(os.pathsep)
from rewards.pool import _template_main
_template_main(int(sys.argv[4]), sys.argv[5:])
"""


class PoolError(RuntimeError):
    """The pool itself failed (its template or workers could not start, or it was killed): no item's outcome.
    Callers stop (or retry the whole batch) rather than record a result for the items."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one item: `ok` (value set), `timeout`, `error` (exception text) or `crashed`."""

    status: str
    value: Any = None
    error: str = ""


@dataclass
class PoolStats:
    tasks: int = 0
    timeouts: int = 0
    killed: int = 0
    crashed: int = 0  # workers that died by themselves (each is replaced)
    started: int = 0
    retried: int = 0  # items run again because their worker died under them


class _Template:
    """The warm process that forks workers; talks over one UNIX socket (fds travel with SCM_RIGHTS)."""

    def __init__(self, preload: Sequence[str], warmup_blob: bytes):
        ours, theirs = socket.socketpair()
        paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path if isinstance(p, str)]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, ROOT, os.pathsep.join(paths), ",".join(PACKAGES),
                 str(theirs.fileno()), *preload],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
            )
        except OSError as e:  # no memory or process slots for one more interpreter
            ours.close()
            raise PoolError(f"the worker process could not start ({e})") from None
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(READY_TIMEOUT_S)
        try:
            self.sock.sendall(struct.pack("q", len(warmup_blob)) + warmup_blob)
            ok = _recv_exact(self.sock, 1) == b"R"
        except (OSError, EOFError):
            ok = False
        if not ok:
            self.sock.close()
            try:
                code = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
            raise PoolError(f"the worker process could not start (exit status {code}, preload {list(preload)}); "
                            "its error is on stderr above")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self) -> "_Worker":
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(self.sock, [b"F"], [theirs.fileno()])
            (pid,) = struct.unpack("q", _recv_exact(self.sock, 8))
        finally:
            theirs.close()
        return _Worker(pid, Connection(ours.detach()))

    def close(self) -> None:
        self.sock.close()  # the template exits on EOF
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("worker template closed its socket")
        data += chunk
    return data


class _Worker:
    def __init__(self, pid: int, conn: Connection):
        self.pid = pid
        self.conn = conn
        self.ready = False
        self.index: int | None = None  # item index being run
        self.deadline = 0.0

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)  # the template reaps it
        except ProcessLookupError:
            pass
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()


class WorkerPool:
    """N worker processes, reusable across `map` calls; a killed or crashed worker is replaced."""

    def __init__(self, workers: int = 2, timeout: float = 5.0, preload: Sequence[str] = (),
                 warmup: Callable[[], Any] | None = None):
        """`preload`: modules each worker imports before it takes work; `warmup`: a picklable function each
        worker runs once before it reports ready (first-call costs stay out of every item's time limit)."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.n_workers = workers
        self.timeout = timeout
        self.preload = tuple(preload)
        self._warmup_blob = pickle.dumps(warmup)
        self.stats = PoolStats()
        self._workers: list[_Worker] = []
        self._template: _Template | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        atexit.register(self.close)

    def _adopt_after_fork(self) -> None:
        # A forked child (DataLoader worker, multiprocessing "fork") inherits our pipes to the parent's
        # workers: it must neither use nor stop them, so it starts its own.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._workers = []
            self._template = None
            self._lock = threading.Lock()

    def _spawn(self) -> _Worker:
        self.stats.started += 1
        for attempt in range(2):
            if self._template is None:
                self._template = _Template(self.preload, self._warmup_blob)
            try:
                return self._template.fork()
            except (OSError, EOFError) as e:
                self._template.close()  # it died; start a new one and retry once
                self._template = None
                if attempt:
                    raise PoolError(f"the worker template died twice while starting a worker ({e})") from None
        raise AssertionError("unreachable")

    def _template_dead(self) -> bool:
        return self._template is None or not self._template.alive()

    def _reset(self) -> None:
        """After a PoolError: kill everything, so the next `map` starts a fresh template and workers."""
        for w in self._workers:
            w.kill()
        self._workers = []
        if self._template is not None:
            self._template.close()
            self._template = None

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], timeout: float | None = None) -> list[Outcome]:
        """Run `fn(item)` for every item; results in input order, each within `timeout` seconds of wall clock."""
        items = list(items)
        limit = self.timeout if timeout is None else timeout
        fn_blob = pickle.dumps(fn)
        self._adopt_after_fork()
        with self._lock:
            if self._closed:
                raise RuntimeError("WorkerPool is closed")
            try:
                self._ensure_workers()
                return self._run(fn_blob, items, limit)
            except PoolError:
                self._reset()
                raise
            except BaseException:
                # Interrupted (Ctrl-C, a bug): busy workers hold stale items; replace them so the pool stays usable.
                try:
                    for w in list(self._workers):
                        if w.index is not None:
                            self._replace(w)
                except PoolError:
                    self._reset()
                raise

    def _run(self, fn_blob: bytes, items: list, limit: float) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        todo = list(range(len(items)))[::-1]
        retried: set[int] = set()  # items whose worker already died under them once
        done = 0
        while done < len(items):
            now = time.monotonic()
            for w in list(self._workers):
                if w.ready and w.index is None and todo:
                    i = todo.pop()
                    try:
                        payload = pickle.dumps((fn_blob, items[i], limit * SOFT_FRACTION))
                    except Exception as e:
                        results[i] = Outcome("error", error=f"item {i} is not picklable: {e}")
                        done += 1
                        continue
                    try:
                        w.conn.send_bytes(payload)
                    except OSError:  # the worker died while idle: replace it and retry the item
                        todo.append(i)
                        self.stats.crashed += 1
                        self._replace(w)
                        continue
                    w.index, w.deadline = i, now + limit
                    self.stats.tasks += 1
            busy = [w for w in self._workers if w.index is not None]
            starting = [w for w in self._workers if not w.ready]
            if busy:
                wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            else:
                wait_s = READY_TIMEOUT_S
            ready_conns = wait([w.conn for w in busy + starting], timeout=wait_s)
            for w in list(self._workers):
                if w.conn not in ready_conns:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    i = w.index
                    if i is None and not w.ready:
                        raise PoolError(f"a worker failed to start (preload {list(self.preload)}); "
                                        "its error is on stderr above") from None
                    if i is not None and i not in retried:  # once: a stray kill must not decide the item
                        retried.add(i)
                        todo.append(i)
                        self.stats.retried += 1
                    elif i is not None and self._template_dead():  # twice, and the whole pool is gone
                        raise PoolError("the worker pool was killed (its template and the workers running "
                                        f"item {i} died, twice)") from None
                    elif i is not None:
                        results[i] = Outcome("crashed", error="worker process died (twice)")
                        done += 1
                    w.index = None
                    self.stats.crashed += 1
                    self._replace(w)
                    continue
                if msg == "ready":
                    w.ready = True
                    continue
                status, payload = msg
                if status == "timeout":
                    self.stats.timeouts += 1
                results[w.index] = Outcome(status, value=payload if status == "ok" else None,
                                           error="" if status == "ok" else str(payload))
                done += 1
                w.index = None
            now = time.monotonic()
            for w in list(self._workers):
                if w.index is not None and now >= w.deadline:
                    results[w.index] = Outcome("timeout", error=f"killed after {limit:g}s")
                    done += 1
                    self.stats.timeouts += 1
                    self.stats.killed += 1
                    self._replace(w)
            if not busy and starting and not ready_conns:
                raise PoolError(f"no worker became ready within {READY_TIMEOUT_S:g}s")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if os.getpid() != self._pid:  # inherited through fork: the workers belong to the parent
            self._workers = []
            self._template = None
            self._closed = True
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for w in self._workers:
                w.stop()
            self._workers = []
            if self._template is not None:
                self._template.close()
                self._template = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SoftTimeout(BaseException):
    """Raised by SIGALRM inside a worker; BaseException so library `except Exception` blocks don't eat it."""


def _on_alarm(signum, frame):
    raise _SoftTimeout()


def _worker_loop(fd: int) -> None:
    conn = Connection(fd)
    signal.signal(signal.SIGALRM, _on_alarm)
    conn.send("ready")
    fns: dict[bytes, Callable] = {}
    while True:
        try:
            blob = conn.recv_bytes()
        except EOFError:
            return
        task = pickle.loads(blob)
        if task is None:
            return
        fn_blob, item, soft_s = task
        try:
            fn = fns.get(fn_blob) or fns.setdefault(fn_blob, pickle.loads(fn_blob))
            signal.setitimer(signal.ITIMER_REAL, soft_s)
            try:
                reply = ("ok", fn(item))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            reply = ("timeout", f"timed out after {soft_s:g}s (soft)")
        except Exception as e:  # the item's own failure, reported, never fatal to the worker
            reply = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        try:
            conn.send(reply)
        except Exception as e:
            conn.send(("error", f"result not picklable: {type(e).__name__}: {e}"))


def _reap(signum, frame) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _template_main(ctrl_fd: int, preload: Sequence[str]) -> None:
    import importlib

    ctrl = socket.socket(fileno=ctrl_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which closes the pool
    for name in preload:
        importlib.import_module(name)
    (size,) = struct.unpack("q", _recv_exact(ctrl, 8))
    warmup = pickle.loads(_recv_exact(ctrl, size))
    if warmup is not None:
        try:
            warmup()
        except Exception:  # a failed warm-up only costs speed; the items will report their own errors
            traceback.print_exc()
    signal.signal(signal.SIGCHLD, _reap)  # reaping (not SIG_IGN) keeps workers' CPU time in rusage
    ctrl.sendall(b"R")
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctrl, 1, 1)
        except OSError:
            return
        if not msg or not fds:  # the parent closed the pool or died: wait for the workers, then go
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.alarm(10)  # a worker that will not exit must not keep the template alive
            try:
                while True:
                    os.wait()
            except ChildProcessError:
                return
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ctrl.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a user fn may run subprocesses
                _worker_loop(fds[0])
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(fds[0])
        ctrl.sendall(struct.pack("q", pid))
        _reap(0, None)
