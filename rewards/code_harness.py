"""Test runner that rewards/code.py copies into the sandbox; it runs there, standalone (stdlib only).

Two ways to start it inside the sandbox:
- `python -I -S code_harness.py SPEC.json CHANNEL_FD` runs one job (cold start), with a secret nonce as the
  first line of stdin;
- `python -I -S code_harness.py --serve SCRATCH_DIR [--isolated]` is a warm fork server: it reads one JSON job per
  line on stdin, forks a fresh child per job (no interpreter start-up), and answers one JSON line per job. Between
  jobs it kills every other process it can see (`kill(-1)`, only with --isolated: inside the sandbox's PID
  namespace that is exactly the previous job's leftovers) and empties the scratch dir and /dev/shm. It makes
  itself non-dumpable, so a job running as the same uid cannot ptrace it or read its memory or file descriptors.

A job lowers the rlimits, runs the program, then each test, and writes one line per event on the channel pipe:
`<nonce> <event> <status> <detail>`. The nonce never touches argv, env or files, so a program cannot forge a pass
by simply writing to the pipe; a program that exits early leaves its tests unreported.
"""
import base64
import json
import os
import resource
import selectors
import shutil
import signal
import sys
import time


class _TestTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _TestTimeout()


def _read_nonce() -> str:
    raw = b""
    while not raw.endswith(b"\n"):
        ch = os.read(0, 1)
        if not ch:
            break
        raw += ch
    return raw.decode().strip()


def _status(exc: BaseException) -> str:
    if isinstance(exc, _TestTimeout):
        return "timeout"
    if isinstance(exc, MemoryError):
        return "memory_limit"
    if isinstance(exc, AssertionError):
        return "failed"
    if isinstance(exc, SyntaxError):
        return "compile_error"
    return "runtime_error"


def _detail(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:200]


def run_job(spec: dict, source: str, nonce: str, channel_fd: int) -> None:
    """Run the program and its tests in this process, reporting on `channel_fd`."""
    channel = os.fdopen(channel_fd, "w", buffering=1)

    def report(event: str, status: str, detail: str = "") -> None:
        channel.write(f"{nonce} {event} {status} {detail}\n")
        channel.flush()

    for name, value in spec["rlimits"].items():
        limit = getattr(resource, name)
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)  # only lowering is allowed
        resource.setrlimit(limit, (value, value))
    signal.signal(signal.SIGALRM, _on_alarm)
    report("start", "ok")

    try:
        code = compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        report("program", "compile_error", _detail(exc))
        return
    timeout = float(spec["timeout_s"])
    namespace = {"__name__": "__main__" if spec["mode"] == "stdio" else "solution", "__builtins__": __builtins__}
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        exec(code, namespace)
        error = None
    except SystemExit as exc:  # a stdin/stdout program may end with exit(); only a clean code counts as success
        error = None if exc.code in (None, 0) else exc
    except BaseException as exc:  # noqa: BLE001 - everything the program raises is its own failure
        error = exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if spec["mode"] == "stdio":
        try:
            sys.stdout.flush()
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
        report("program", "ok" if error is None else _status(error), "" if error is None else _detail(error))
        return
    if error is not None:
        status = "runtime_error" if isinstance(error, (AssertionError, SystemExit)) else _status(error)
        detail = _detail(error)
        del error
        namespace.clear()  # after a MemoryError the program's data may still fill the address space
        report("program", status, detail)
        return
    report("program", "ok")
    for index, test in enumerate(spec["tests"]):
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            exec(compile(test, f"test_{index}.py", "exec"), namespace)
            status, detail = "passed", ""
        except SystemExit as exc:
            status, detail = "runtime_error", _detail(exc)
        except BaseException as exc:  # noqa: BLE001
            status, detail = _status(exc), _detail(exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if status == "memory_limit":  # free the memory to report; later tests get a fresh launch
            namespace.clear()
            report(str(spec["first_index"] + index), status, detail)
            return
        report(str(spec["first_index"] + index), status, detail)


def main() -> None:
    spec_path, channel_fd = sys.argv[1], int(sys.argv[2])
    nonce = _read_nonce()
    with open(spec_path) as f:
        spec = json.load(f)
    with open(os.path.join(os.path.dirname(spec_path), "program.py")) as f:
        source = f.read()
    run_job(spec, source, nonce, channel_fd)


# -- warm fork server ----------------------------------------------------------------------------------------------


def _child(job: dict, fds: dict, scratch: str) -> None:
    """In the forked child: wire stdin/stdout/stderr to the job's pipes, drop everything else, run the job."""
    try:
        os.setsid()
        os.dup2(fds["in_r"], 0)
        os.dup2(fds["out_w"], 1)
        os.dup2(fds["err_w"], 2)
        channel = os.dup2(fds["chan_w"], 3, inheritable=False) if fds["chan_w"] != 3 else 3
        os.closerange(4, 1 << 16)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
        os.chdir(scratch)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        run_job(job["spec"], job["program"], job["nonce"], channel)
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException as exc:  # noqa: BLE001 - say why on stderr; the host maps it to a status
        os.write(2, f"harness: {type(exc).__name__}: {exc}\n".encode()[:500])
        os._exit(1)
    finally:
        os._exit(0)


def _serve_one(job: dict, scratch: str, isolated: bool) -> dict:
    cap = int(job["output_bytes"])
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    chan_r, chan_w = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        for fd in (in_w, out_r, err_r, chan_r, _SERVER_IN, _SERVER_OUT):
            os.close(fd)
        _child(job, {"in_r": in_r, "out_w": out_w, "err_w": err_w, "chan_w": chan_w}, scratch)
    for fd in (in_r, out_w, err_w, chan_w):
        os.close(fd)
    deadline = time.monotonic() + float(job["wall_s"])
    bufs = {out_r: bytearray(), err_r: bytearray(), chan_r: bytearray()}
    pending = memoryview(job.get("stdin", "").encode())
    timed_out = truncated = False
    exited = os.pidfd_open(pid)  # readable once the job's main process has exited
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(exited, selectors.EVENT_READ)
        os.set_blocking(in_w, False)
        sel.register(in_w, selectors.EVENT_WRITE)
        open_reads = 3
        while open_reads and not truncated:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                if key.fd == exited:  # whatever it left behind must not hold its pipes open
                    sel.unregister(exited)
                    _kill(-pid)
                    if isolated:
                        _kill(-1)
                    continue
                if key.fd == in_w:
                    try:
                        pending = pending[os.write(in_w, pending[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(in_w)
                        os.close(in_w)
                        in_w = -1
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    open_reads -= 1
                    continue
                bufs[key.fd] += chunk
                if len(bufs[key.fd]) > cap:
                    del bufs[key.fd][cap:]
                    truncated = True
    if timed_out or truncated:
        _kill(-pid)
        _kill(pid)
    _, status = os.waitpid(pid, 0)
    returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    for fd in (in_w, out_r, err_r, chan_r, exited):
        if fd >= 0:
            os.close(fd)
    _clean_up(scratch, isolated)
    encode = lambda b: base64.b64encode(bytes(b)).decode()  # noqa: E731
    return {"returncode": returncode, "timed_out": timed_out, "truncated": truncated,
            "stdout": encode(bufs[out_r]), "stderr": encode(bufs[err_r]), "channel": encode(bufs[chan_r])}


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _clean_up(scratch: str, isolated: bool) -> None:
    """Leave nothing of the last job for the next: no processes, no files."""
    if isolated:
        me = os.getpid()
        for _ in range(100):
            _kill(-1)  # every process in the sandbox but this server and the namespace's init
            while True:
                try:
                    if os.waitpid(-1, os.WNOHANG) == (0, 0):
                        break
                except ChildProcessError:
                    break
            others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
            if not others:
                break
            time.sleep(0.001 if any(_alive(p) for p in others) else 0.0002)  # zombies: init reaps them
    for root in (scratch, "/dev/shm" if isolated else None):
        if root and os.path.isdir(root):
            for name in os.listdir(root):
                path = os.path.join(root, name)
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                except OSError:
                    pass


def _alive(pid: str) -> bool:
    """A process that is not yet a zombie (zombies are reaped by the namespace's init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _make_undumpable() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


_SERVER_IN, _SERVER_OUT = 0, 1


def serve(scratch: str, isolated: bool) -> None:
    global _SERVER_IN, _SERVER_OUT
    _make_undumpable()
    os.makedirs(scratch, exist_ok=True)
    # keep the host pipes on high fds so a job's stdin/stdout can take 0/1
    _SERVER_IN, _SERVER_OUT = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    sys.stdout = open(1, "w", closefd=False)
    reader = os.fdopen(_SERVER_IN, "rb", buffering=1 << 16)
    writer = os.fdopen(_SERVER_OUT, "wb", buffering=0)
    for line in reader:
        job = json.loads(line)
        reply = _serve_one(job, scratch, isolated)
        writer.write(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2], "--isolated" in sys.argv[3:])
    else:
        main()
