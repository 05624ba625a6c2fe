"""Test runner that rewards/code.py copies into the sandbox; it runs there, standalone (stdlib only).

Usage inside the sandbox: `python -I -S code_harness.py SPEC.json CHANNEL_FD`, with a secret nonce as the first
line of stdin. It lowers the rlimits, runs the program, then each test, and writes one line per event on the
channel pipe: `<nonce> <event> <status> <detail>`. The nonce never touches argv, env or files, so a program
cannot forge a pass by simply writing to the pipe; a program that exits early leaves its tests unreported.
"""
import json
import os
import resource
import signal
import sys


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


def main() -> None:
    spec_path, channel_fd = sys.argv[1], int(sys.argv[2])
    nonce = _read_nonce()
    channel = os.fdopen(channel_fd, "w", buffering=1)

    def report(event: str, status: str, detail: str = "") -> None:
        channel.write(f"{nonce} {event} {status} {detail}\n")
        channel.flush()

    with open(spec_path) as f:
        spec = json.load(f)
    with open(os.path.join(os.path.dirname(spec_path), "program.py")) as f:
        source = f.read()
    for name, value in spec["rlimits"].items():
        limit = getattr(resource, name)
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
        report("program", status, _detail(error))
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
        report(str(spec["first_index"] + index), status, detail)


if __name__ == "__main__":
    main()
