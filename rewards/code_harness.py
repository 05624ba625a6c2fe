"""The judge and the submission: two processes that rewards/code.py starts in one fresh sandbox per row.

Stdlib only; it runs inside the sandbox, copied there as `harness.py`.

- `python -I -S harness.py --judge CHANNEL_FD [--isolated]` is the judge. Inside the sandbox it is the box's
  PID 1 (`bwrap --as-pid-1`): the submission cannot signal it (the kernel drops signals to a namespace's init that
  it has no handler for), and it makes itself non-dumpable first thing, so the submission (same uid) cannot ptrace
  it or open its memory, environment or file descriptors under /proc/1. It reads one job (marshal) on stdin (the
  program, the tests, the limits), says `started` on the channel, starts the submission, runs the tests in its own
  interpreter and writes one reply naming the job's id on the channel. Nothing the submission can write
  reaches the channel.
- `python -I -S harness.py --submission` is the submission process, exec'd fresh by the judge (so it inherits
  none of the judge's memory) with the program's rlimits. It gets the program's source on fd 3, runs it, and then
  answers the judge's requests (call this, get that attribute, iterate) on fd 4.

The boundary between them carries plain data only (tagged, in marshal's format): None, bool, int, float, complex, str, bytes and lists,
tuples, sets, frozensets and dicts of those, each checked by exact type (`type(x) is int`, never isinstance) and
rebuilt by the judge as fresh builtin objects. Anything else the submission returns stays in the submission and
reaches the tests as an opaque `Remote` handle: its methods can be called and it can be iterated, but it compares
equal to nothing but itself, so an object whose `__eq__` always says yes cannot pass a test. The tests' source and
expected values never enter the submission's memory or file system, and the builtins the tests use are the
judge's own, so patching `exec`, `abs`, `isinstance` or the harness in the submission changes nothing the judge
computes.
"""
import builtins
import fcntl
import marshal
import os
import resource
import select
try:  # the C module: `signal` itself imports enum, which costs more than a test
    import _signal as signal
except ImportError:  # not CPython
    import signal
import sys
import time

_MAX_DEPTH = 200
_SCALAR_TAGS = {int: "i", float: "f", complex: "c", str: "s", bytes: "y"}
_SCALAR_KINDS = {tag: kind for kind, tag in _SCALAR_TAGS.items()}
_HIGH_FD = 100


class _TestTimeout(BaseException):
    pass


class SubmissionError(Exception):
    """The submission raised an exception that is not one of Python's builtin exceptions, or broke the protocol."""


class _SubmissionGone(BaseException):
    """The submission process died or answered with something that is not a reply."""


class _SubmissionMemory(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _TestTimeout()


def _detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]


# -- plain data across the boundary ----------------------------------------------------------------------------------


def encode(value, refer=None, depth: int = 0):
    """Tagged JSON for plain data. `refer(obj)` turns anything else into a reference (`["h", ...]`); without it,
    anything else raises TypeError."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply to cross the boundary")
    kind = type(value)
    if value is None:
        return ["N"]
    if kind is bool:
        return ["b", value]
    if kind in (int, float, complex, str, bytes):
        return [_SCALAR_TAGS[kind], value]
    if kind in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "S", frozenset: "F"}[kind]
        return [tag, [encode(v, refer, depth + 1) for v in value]]
    if kind is dict:
        return ["d", [[encode(k, refer, depth + 1), encode(v, refer, depth + 1)] for k, v in value.items()]]
    if refer is None:
        raise TypeError(f"a {kind.__name__} cannot cross the boundary (plain data only)")
    return refer(value)


def decode(data, resolve=None, depth: int = 0):
    """The inverse of `encode`, building fresh builtin objects; raises ValueError on anything malformed.
    `resolve(data)` turns a reference back into an object; without it a reference is malformed."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if type(data) is not list or not data or type(data[0]) is not str:
        raise ValueError("malformed value")
    tag, rest = data[0], data[1:]
    try:
        if tag == "N" and not rest:
            return None
        if tag == "b" and type(rest[0]) is bool:
            return rest[0]
        if tag in _SCALAR_KINDS and len(rest) == 1 and type(rest[0]) is _SCALAR_KINDS[tag]:
            return rest[0]
        if tag in ("l", "t", "S", "F") and type(rest[0]) is list:
            items = [decode(v, resolve, depth + 1) for v in rest[0]]
            return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
        if tag == "d" and type(rest[0]) is list:
            out = {}
            for pair in rest[0]:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("malformed dict item")
                out[decode(pair[0], resolve, depth + 1)] = decode(pair[1], resolve, depth + 1)
            return out
        if tag == "h" and resolve is not None:
            return resolve(data)
    except (IndexError, TypeError, OverflowError) as exc:
        raise ValueError(f"malformed value: {exc}") from None
    raise ValueError(f"malformed value (tag {tag!r})")


# -- line-delimited JSON messages over pipes -----------------------------------------------------------------------


class _Messages:
    """Reads length-prefixed marshal messages from `fd`; while waiting, drains the `drain` fds into capped buffers
    so that a writer to those cannot block. Blocking: the judge's per-test alarm interrupts it. marshal, not json:
    it is built in (json's import alone costs more than a test), and what it reads is checked by `decode`."""

    def __init__(self, fd: int, cap: int, drain: dict | None = None, drain_cap: int = 65536):
        self.fd, self.cap, self.buf = fd, cap, bytearray()
        self.drain = dict(drain or {})
        self.drain_cap = drain_cap

    def read(self):
        while True:
            if len(self.buf) >= 4:
                size = int.from_bytes(self.buf[:4], "big")
                if size > self.cap:
                    raise _SubmissionGone("reply too large")
                if len(self.buf) >= 4 + size:
                    payload = bytes(self.buf[4:4 + size])
                    del self.buf[:4 + size]
                    try:
                        return marshal.loads(payload)
                    except (EOFError, ValueError, TypeError) as exc:
                        raise ValueError(f"malformed message: {exc}") from None
            ready, _, _ = select.select([self.fd, *self.drain], [], [])
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if fd == self.fd:
                    if not chunk:
                        raise _SubmissionGone("the submission exited")
                    self.buf += chunk
                elif not chunk:
                    del self.drain[fd]
                else:
                    buf = self.drain[fd]
                    if len(buf) < self.drain_cap:
                        buf += chunk[: self.drain_cap - len(buf)]


def frames(data: bytes) -> list:
    """Every whole message in `data` (the host reading the judge's channel)."""
    out, at = [], 0
    while at + 4 <= len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        if at + 4 + size > len(data):
            break
        try:
            out.append(marshal.loads(data[at + 4:at + 4 + size]))
        except (EOFError, ValueError, TypeError):
            pass
        at += 4 + size
    return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, message: dict) -> None:
    data = marshal.dumps(message)
    _write_all(fd, len(data).to_bytes(4, "big") + data)


# -- the submission process ------------------------------------------------------------------------------------------


def submission_main() -> None:
    """Run the program from fd 3, then serve the judge's requests on fds 3/4 until fd 3 closes."""
    ctrl_in = _Messages(3, 1 << 30)
    out = 4
    try:
        job = ctrl_in.read()
        _lower_rlimits(job.get("rlimits") or {})
    except BaseException:  # noqa: BLE001
        os._exit(3)
    mode = job["mode"]
    try:
        code = compile(job["program"], "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        _send(out, {"status": "compile_error", "detail": _detail(exc)})
        os._exit(1)
    del job
    namespace = {"__name__": "__main__" if mode == "stdio" else "solution", "__builtins__": builtins}
    status = "ok"
    try:
        exec(code, namespace)
        error = None
    except SystemExit as exc:  # a stdin/stdout program may end with exit(); only a clean code is a success
        error = None if exc.code in (None, 0) else exc
    except BaseException as exc:  # noqa: BLE001 - everything the program raises is its own failure
        error = exc
    if mode == "stdio":
        try:
            sys.stdout.flush()
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
        if error is not None:
            _send(out, {"status": _kind(error), "detail": _detail(error)})
            os._exit(1)
        os._exit(0)
    if error is not None:
        status = "runtime_error" if isinstance(error, (AssertionError, SystemExit)) else _kind(error)
        detail = _detail(error)
        del error
        namespace.clear()  # after a MemoryError the program's data may still fill the address space
        _send(out, {"status": status, "detail": detail})
        os._exit(1)
    objects: list = []

    def refer(obj):
        objects.append(obj)
        return ["h", len(objects) - 1, type(obj).__name__[:60]]

    def resolve(data):
        index = data[1]
        if type(index) is not int or not 0 <= index < len(objects):
            raise ValueError("unknown reference")
        return objects[index]

    names = {}
    for name, value in list(namespace.items()):
        if name.startswith("__") or type(value).__name__ == "module":
            continue
        try:
            names[name] = encode(value, refer)
        except (ValueError, RecursionError):
            names[name] = refer(value)
    _send(out, {"status": "ok", "names": names})
    while True:
        try:
            request = ctrl_in.read()
        except _SubmissionGone:
            os._exit(0)
        _send(out, _answer(request, resolve, refer))


def _answer(request: dict, resolve, refer) -> dict:
    seq = request.get("seq")
    try:
        target = decode(request["target"], resolve)
        op = request["op"]
        if op == "call":
            args = decode(request["args"], resolve)
            kwargs = decode(request["kwargs"], resolve)
            result = target(*args, **kwargs)
            reply = {"seq": seq, "value": encode(result, refer)}
            changed = {str(i): encode(a, refer) for i, a in enumerate(args) if type(a) in (list, dict, set)}
            if changed:
                reply["args"] = changed
            return reply
        if op == "getattr":
            return {"seq": seq, "value": encode(getattr(target, request["name"]), refer)}
        if op == "iter":
            return {"seq": seq, "value": refer(iter(target))}
        if op == "next":
            return {"seq": seq, "value": encode(next(target), refer)}
        if op == "getitem":
            return {"seq": seq, "value": encode(target[decode(request["key"], resolve)], refer)}
        if op == "len":
            return {"seq": seq, "value": encode(len(target))}
        if op == "str":
            return {"seq": seq, "value": encode(str(target)[:10000])}
        raise ValueError(f"unknown request {op!r}")
    except BaseException as exc:  # noqa: BLE001 - the judge decides what the exception means for the test
        return {"seq": seq, "raise": [type(exc).__name__[:60], str(exc)[:200]]}


def _kind(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory_limit"
    if isinstance(exc, SyntaxError):
        return "compile_error"
    return "runtime_error"


# -- the judge --------------------------------------------------------------------------------------------------------


class Remote:
    """Something of the submission's that is not plain data: callable, attributes, iteration and indexing go to the
    submission; comparison and hashing are this handle's own (identity), never the submission's."""

    __slots__ = ("_sub", "_ref")

    def __init__(self, sub, ref):
        object.__setattr__(self, "_sub", sub)
        object.__setattr__(self, "_ref", ref)

    def __call__(self, *args, **kwargs):
        return self._sub.request("call", self, args=args, kwargs=kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._sub.request("getattr", self, name=name)

    def __iter__(self):
        return self._sub.request("iter", self)

    def __next__(self):
        return self._sub.request("next", self)

    def __getitem__(self, key):
        return self._sub.request("getitem", self, key=key)

    def __len__(self):
        return self._sub.request("len", self)

    def __str__(self):
        return self._sub.request("str", self)

    def __repr__(self):
        return f"<{self._ref[2] if len(self._ref) > 2 else 'object'} of the submission>"


class _Submission:
    """The judge's side of one submission process."""

    def __init__(self, isolated: bool):
        self.job: dict = {}
        self.isolated = isolated
        self.pid = -1
        self.returncode = None
        self.err = bytearray()
        self.seq = 0
        self.names: dict = {}

    def spawn(self, fresh_exec: bool = True) -> None:
        """Start a submission process with pipes for its stdin, stdout, stderr and the requests both ways.

        `fresh_exec=False` (once, before the judge has read its job) forks it without exec: the judge's memory then
        holds nothing but the harness, so the child needs no interpreter start of its own. Later ones (after a test
        killed the last) are exec'd fresh: by then the judge holds the tests."""
        pipes = [os.pipe() for _ in range(5)]  # stdin, stdout, stderr, requests, replies
        (in_r, in_w), (out_r, out_w), (err_r, err_w), (c_in_r, c_in_w), (c_out_r, c_out_w) = pipes
        if fresh_exec:
            argv = [sys.executable, *self.job["interpreter_flags"],
                    *launcher(os.path.dirname(os.path.abspath(__file__))), "--submission"]
        pid = os.fork()
        if pid == 0:
            try:
                wanted = [in_r, out_w, err_w, c_in_r, c_out_w]
                high = [fcntl.fcntl(fd, fcntl.F_DUPFD, _HIGH_FD) for fd in wanted]
                for target, fd in enumerate(high):
                    os.dup2(fd, target)
                os.closerange(len(wanted), 1 << 16)
                os.setsid()
                if fresh_exec:
                    _lower_rlimits(self.job["rlimits"])
                    os.execv(argv[0], argv)
                else:
                    _set_dumpable(1)  # the judge's flag is inherited; this process has nothing to hide
                    submission_main()
            finally:
                os._exit(127)
        for fd in (in_r, out_w, err_w, c_in_r, c_out_w):
            os.close(fd)
        self.pid = pid
        self.in_w, self.out_r, self.err_r, self.ctrl_w, self.ctrl_r = in_w, out_r, err_r, c_in_w, c_out_r
        self.err = bytearray()

    def start(self) -> tuple[str, str]:
        """Run the program in the submission (a fresh one unless the preforked one is waiting); returns the
        program's (status, detail)."""
        if self.pid <= 0:
            self.spawn()
        os.close(self.in_w)  # with asserts the program's stdin is empty
        self.in_w = -1
        self.reader = _Messages(self.ctrl_r, 16 * self.job["output_bytes"] + (1 << 20),
                                {self.err_r: self.err, self.out_r: bytearray()})
        try:
            _send(self.ctrl_w, {"mode": "asserts", "program": self.job["program"], "rlimits": self.job["rlimits"]})
            ready = self.reader.read()
        except _SubmissionGone as exc:
            return self.exit_status(str(exc))
        except (ValueError, OSError) as exc:
            return "runtime_error", f"the submission broke the protocol: {_detail(exc)}"
        if type(ready) is not dict or ready.get("status") != "ok":
            status = ready.get("status") if type(ready) is dict else None
            if status not in ("compile_error", "runtime_error", "memory_limit"):
                status = "runtime_error"
            return status, str(ready.get("detail", ""))[:200] if type(ready) is dict else ""
        names = ready.get("names")
        if type(names) is not dict:
            return "runtime_error", "the submission broke the protocol"
        try:
            self.names = {str(k): decode(v, self.resolve) for k, v in names.items()}
        except (ValueError, RecursionError) as exc:
            return "runtime_error", f"the submission broke the protocol: {exc}"
        return "ok", ""

    def resolve(self, data):
        if len(data) != 3 or type(data[1]) is not int:
            raise ValueError("malformed reference")
        return Remote(self, ["h", data[1], str(data[2])])

    def refer(self, obj):
        if type(obj) is Remote and obj._sub is self:
            return obj._ref[:2]
        raise TypeError(f"a {type(obj).__name__} cannot be passed to the submission (plain data only)")

    def request(self, op: str, target: Remote, **fields):
        self.seq += 1
        message = {"seq": self.seq, "op": op, "target": encode(target, self.refer)}
        for key, value in fields.items():
            message[key] = value if key == "name" else encode(value, self.refer)
        try:
            _send(self.ctrl_w, message)
            reply = self.reader.read()
        except (BrokenPipeError, ValueError):
            raise _SubmissionGone("the submission broke the protocol") from None
        if type(reply) is not dict or reply.get("seq") != self.seq:
            raise _SubmissionGone("the submission answered out of turn")
        if "raise" in reply:
            name, text = (list(reply["raise"]) + ["", ""])[:2]
            _raise_as(str(name), str(text))
        try:
            value = decode(reply.get("value"), self.resolve)
            if op == "call" and type(reply.get("args")) is dict:
                self._copy_back(fields["args"], reply["args"])
        except (ValueError, RecursionError) as exc:
            raise _SubmissionGone(f"the submission broke the protocol: {exc}") from None
        return value

    def _copy_back(self, args: tuple, changed: dict) -> None:
        """Arguments the submission changed in place (sorting a list it was given): the same change here."""
        for key, data in changed.items():
            index = int(key)
            original, new = args[index], decode(data, self.resolve)
            if type(original) is list and type(new) is list:
                original[:] = new
            elif type(original) in (dict, set) and type(new) is type(original):
                original.clear()
                original.update(new)

    def exit_status(self, reason: str = "") -> tuple[str, str]:
        """Why the submission stopped answering: the way it exited, else `reason` (it was then killed)."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        on_its_own = self.kill(grace_s=0.2)
        err = bytes(self.err).decode(errors="replace")
        if self.returncode == -signal.SIGXCPU:
            return "timeout", "cpu-time limit"
        if "MemoryError" in err:
            return "memory_limit", "MemoryError"
        if not on_its_own:
            return "runtime_error", reason[:200]
        tail = err.strip().replace("\n", " ")[-150:]
        return "runtime_error", f"the submission exited with code {self.returncode} {tail}".strip()

    def kill(self, grace_s: float = 0.0) -> bool:
        """Kill the submission and everything it started, after waiting up to `grace_s` for it to exit by itself;
        reap it. True when it had exited by itself."""
        if self.pid <= 0:
            self._close_pipes()
            return True
        on_its_own = False
        deadline = time.monotonic() + grace_s
        while True:
            pid, raw = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                on_its_own = True
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        for target in (-self.pid, self.pid):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        if self.isolated:  # PID 1 of the box: every other process in it is the submission's
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
        if not on_its_own:
            _, raw = os.waitpid(self.pid, 0)
        self.returncode = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
        self.pid = -1
        self._close_pipes()
        _reap()
        return on_its_own

    def _close_pipes(self) -> None:
        for name in ("ctrl_w", "ctrl_r", "err_r", "in_w", "out_r"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            setattr(self, name, -1)


def _raise_as(name: str, text: str) -> None:
    """Raise, in the judge, the builtin exception the submission raised (a test may expect a ValueError)."""
    if name == "MemoryError":
        raise _SubmissionMemory(text)
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            exc = kind(text)
        except Exception:  # noqa: BLE001 - exceptions whose constructor wants more arguments
            exc = SubmissionError(f"{name}: {text}")
        raise exc
    raise SubmissionError(f"{name}: {text}")


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _test_status(exc: BaseException) -> str:
    if isinstance(exc, _TestTimeout):
        return "timeout"
    if isinstance(exc, (MemoryError, _SubmissionMemory)):
        return "memory_limit"
    if isinstance(exc, AssertionError):
        return "failed"
    return "runtime_error"


def judge_asserts(job: dict, sub: _Submission) -> dict:
    timeout = float(job["timeout_s"])
    tests = job["tests"]
    results = []
    program = None
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        program = sub.start()
    except _TestTimeout:
        program = ("timeout", "the program's top level ran past the time limit")
    except OSError as exc:  # fork failed: the submission filled the process table
        program = ("runtime_error", _detail(exc))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if program[0] != "ok":
        sub.kill()
        return {"program": list(program), "tests": []}
    for index, test in enumerate(tests):
        broken = False  # the submission is stuck, full or dead: the next test gets a fresh one
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            if sub.pid <= 0:  # the last test ended it: a fresh one, with the program run again
                again = sub.start()
                if again[0] != "ok":
                    raise _SubmissionGone(f"{again[0]}: {again[1]}")
            namespace = {"__name__": "__main__", "__builtins__": builtins, **sub.names}
            exec(compile(test, f"test_{index}.py", "exec"), namespace)
            status, detail = "passed", ""
        except _SubmissionGone as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            status, detail = sub.exit_status(str(exc))
        except SystemExit as exc:
            status, detail = "runtime_error", _detail(exc)
        except BaseException as exc:  # noqa: BLE001 - the test's own exception, or the submission's re-raised
            status = _test_status(exc)
            detail = "time limit" if status == "timeout" else _detail(exc)
            broken = status in ("timeout", "memory_limit")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if broken:
            sub.kill()
        results.append([status, detail])
    sub.kill()
    return {"program": ["ok", ""], "tests": results}


def judge_stdio(job: dict, sub: _Submission) -> dict:
    timeout = float(job["timeout_s"])
    cap = int(job["output_bytes"])
    if sub.pid <= 0:
        sub.spawn()
    bufs = {sub.out_r: bytearray(), sub.err_r: bytearray(), sub.ctrl_r: bytearray()}
    stdout, stderr, ctrl = (bufs[fd] for fd in (sub.out_r, sub.err_r, sub.ctrl_r))
    truncated = False
    program = ("ok", "")
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        _send(sub.ctrl_w, {"mode": "stdio", "program": job["program"], "rlimits": job["rlimits"]})
        pending = memoryview(job["stdin"].encode())
        os.set_blocking(sub.in_w, False)
        open_reads = set(bufs)
        while open_reads and not truncated:
            writers = [sub.in_w] if sub.in_w >= 0 else []
            readable, writable, _ = select.select(list(open_reads), writers, [])
            if writable:
                try:
                    pending = pending[os.write(sub.in_w, pending[:1 << 16]):]
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    pending = pending[:0]
                if not pending:
                    os.close(sub.in_w)
                    sub.in_w = -1
            for fd in readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_reads.discard(fd)
                    continue
                bufs[fd] += chunk
                if len(bufs[fd]) > cap:
                    del bufs[fd][cap:]
                    truncated = True
        if not truncated:
            _, raw = os.waitpid(sub.pid, 0)  # stdout closed is not the end: the process must exit in time
            code = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
            sub.pid = -1
            program = _stdio_status(code, bytes(ctrl), bytes(stderr))
    except _TestTimeout:
        program = ("timeout", "time limit")
    except OSError as exc:
        program = ("runtime_error", _detail(exc))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    sub.kill()
    return {"program": list(program), "stdout": bytes(stdout), "stderr": bytes(stderr), "truncated": truncated}


def _stdio_status(code: int, ctrl: bytes, err: bytes) -> tuple[str, str]:
    if code == 0:
        return "ok", ""
    if code == -signal.SIGXCPU:
        return "timeout", "cpu-time limit"
    said = (frames(ctrl) or [None])[0]
    if type(said) is dict and said.get("status") in ("compile_error", "runtime_error", "memory_limit"):
        return said["status"], str(said.get("detail", ""))[:200]
    if b"MemoryError" in err:
        return "memory_limit", "MemoryError"
    return "runtime_error", f"exited with code {code}"


def boot_command(folder: str) -> list[str]:
    """How to start this harness from `folder` when the host put it there precompiled (`harness.bin`, marshal of
    the code object, same interpreter): compiling 700 lines costs more than the tests of most rows."""
    code = (f"import marshal;exec(marshal.loads(open({folder + '/harness.bin'!r},'rb').read()),"
            f"dict(__name__='__main__',__file__={folder + '/harness.py'!r},__builtins__=__builtins__))")
    return ["-c", code]


def launcher(folder: str) -> list[str]:
    if os.path.exists(os.path.join(folder, "harness.bin")):
        return boot_command(folder)
    return [os.path.join(folder, "harness.py")]


def _set_dumpable(flag: int) -> None:
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, flag, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise OSError(ctypes.get_errno(), f"prctl(PR_SET_DUMPABLE, {flag}) failed")


def _lower_rlimits(limits: dict) -> None:
    for name, value in limits.items():
        limit = getattr(resource, name)
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)  # only lowering is allowed
        resource.setrlimit(limit, (value, value))


def judge_main(channel_fd: int, isolated: bool) -> None:
    _set_dumpable(0)
    sub = _Submission(isolated)
    sub.spawn(fresh_exec=False)  # before the job is read: nothing of the tests is in this memory yet
    raw = b""
    while True:  # the job, whole, before anything else runs
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        raw += chunk
    job = marshal.loads(raw)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):  # the tests' prints go nowhere; the channel is the only way out
        os.dup2(null, fd)
    os.close(null)
    channel = fcntl.fcntl(channel_fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(channel_fd)
    _send(channel, {"id": job["id"], "event": "started"})
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        sub.job = job
        reply = judge_stdio(job, sub) if job["mode"] == "stdio" else judge_asserts(job, sub)
    except BaseException as exc:  # noqa: BLE001 - the judge must answer; the host scores what it says
        reply = {"program": ["runtime_error", f"judge: {_detail(exc)}"], "tests": []}
    reply.update({"id": job["id"], "event": "done"})
    _send(channel, reply)


if __name__ == "__main__":
    if sys.argv[1] == "--submission":
        submission_main()
    else:
        judge_main(int(sys.argv[2]), "--isolated" in sys.argv[3:])
