"""Run untrusted programs inside an isolation layer: bubblewrap namespaces plus a pids cgroup.

Each launch gets:
- its own user, PID, network, IPC, UTS and cgroup namespaces (`bwrap --unshare-all --unshare-user`): the network
  namespace has only `lo`, so nothing on the host (not even 127.0.0.1) or outside is reachable;
- a filesystem built from scratch and read-only: the system (`/usr`, the interpreter's prefix), a fresh `/proc`, a
  minimal `/dev`, the job's own files at `/sandbox`; the only writable places are a private `/tmp` (a fresh tmpfs
  per launch, capped in size and, when we may mount one ourselves (root), in inodes: empty files cost kernel memory)
  and a size-capped `/dev/shm`. Nothing else of the host (home, /work, /etc, other temp dirs) is mounted, and
  nothing written survives the launch;
- its own PID namespace in which the launched program is PID 1 (`--as-pid-1`: no bwrap reaper in between), so a
  program that makes itself non-dumpable there (the code judge does) cannot be signalled, traced or read through
  /proc/1 by what it starts; a minimal environment (PATH, HOME), both for bwrap and inside, so no secret of the
  caller's environment is anywhere in the box;
- an unprivileged uid (65534) with no capabilities, no new user namespaces, a new session (no terminal access);
- a cap on the number of processes: a pids cgroup per worker slot when running as root (RLIMIT_NPROC is not
  enforced for root, and bwrap maps the sandbox's uid to its caller's), else RLIMIT_NPROC, with bwrap started as
  uid 65534 when root has no writable cgroup; plus rlimits set before any untrusted code runs (CPU time, address
  space, file size, open files, no core dumps);
- a wall-clock limit that kills the whole tree: the PID namespace dies with its init, and any process still in
  the cgroup afterwards is killed;
- stdout/stderr captured up to a cap, with truncation flagged (the program is killed when it floods).

Without bubblewrap (or without a way to cap processes) `Sandbox` raises `SandboxUnavailable` saying how to
install it; running without isolation needs `allow_unsandboxed_code_execution=True`.
"""
from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = (
    "install bubblewrap with `bash scripts/install_sandbox.sh` (or `apt-get install -y bubblewrap`), or pass "
    "allow_unsandboxed_code_execution=True (CLI: --i-know-this-runs-untrusted-code-unsandboxed) to run untrusted "
    "code with no isolation at all"
)
SANDBOX_UID = 65534
JOB_MOUNT = "/sandbox"


class SandboxUnavailable(RuntimeError):
    """The isolation layer cannot be set up on this machine."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-launch limits. Memory and sizes are in MiB."""

    wall_s: float = 10.0  # wall clock for the whole launch; the process tree is killed after it
    cpu_s: int = 10  # RLIMIT_CPU
    memory_mb: int = 2048  # RLIMIT_AS (address space, so it is larger than the resident memory used)
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    tmp_mb: int = 64  # size of the private tmpfs at /tmp
    max_procs: int = 32  # pids cgroup limit (processes + threads)
    max_open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 64 * 1024  # stdout and stderr are each captured up to this many bytes
    tmp_inodes: int = 4096  # files and folders in /tmp (when we can mount its tmpfs ourselves: as root)
    shm_mb: int = 16  # size of /dev/shm


@dataclass
class SandboxRun:
    """What one launch produced. `returncode` is negative for a signal, None when we killed it."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    channel: bytes  # what the program wrote on its result pipe (argv placeholder `{channel_fd}`)
    timed_out: bool = False
    truncated: bool = False
    wall_s: float = 0.0
    leftover_killed: int = 0
    extra: dict = field(default_factory=dict)


def _find_pids_cgroup() -> Path | None:
    """A writable directory under which per-slot pids cgroups can be made (cgroup v1 or v2), else None."""
    v1 = Path("/sys/fs/cgroup/pids")
    candidates = []
    if (v1 / "cgroup.procs").exists():
        candidates.append(v1 / "prefsmith-sandbox")
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if controllers.exists() and "pids" in controllers.read_text().split():
        candidates.append(v2 / "prefsmith-sandbox")
    for base in candidates:
        try:
            base.mkdir(exist_ok=True)
            if base.parent == v2:  # v2: the parent must delegate the pids controller to its children
                (base / "cgroup.subtree_control").write_text("+pids")
            probe = base / f"probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            probe.mkdir()
            ok = (probe / "pids.max").exists()
            probe.rmdir()
            if ok:
                return base
        except OSError:
            continue
    return None


class _Slot:
    """One pids cgroup; a launch holds it for its whole life so leftovers can be found and killed."""

    def __init__(self, base: Path | None, max_procs: int):
        self.path: Path | None = None
        if base is not None:
            self.path = base / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.path.mkdir()
            # + bwrap (sh execs into it) and the judge, PID 1 of the box
            (self.path / "pids.max").write_text(str(max_procs + 2))

    def pids(self) -> list[int]:
        if self.path is None:
            return []
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> int:
        """SIGKILL every process still in the cgroup after a short grace (exiting ones leave by themselves);
        returns how many were killed."""
        for _ in range(20):
            if not self.pids():
                return 0
            time.sleep(0.002)
        killed = 0
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
        return killed

    def remove(self) -> None:
        if self.path is not None:
            self.kill_all()
            try:
                self.path.rmdir()
            except OSError:
                pass


class Sandbox:
    """Launches commands in isolation; thread-safe, `workers` launches may run at once.

    Example:
        with Sandbox(workers=2) as sb:
            run = sb.run(["{python}", "-c", "print(1+1)"], files={})
            run.stdout  # b"2\\n"
    """

    def __init__(
        self,
        limits: SandboxLimits = SandboxLimits(),
        workers: int = 1,
        python: str | None = None,
        ro_binds: tuple[str, ...] = (),
        allow_unsandboxed_code_execution: bool = False,
        pids_cgroup: bool | None = None,
    ):
        """`pids_cgroup`: cap processes with a pids cgroup (None: when running as root and one is writable). As root
        without one, bwrap itself runs as uid 65534 so that RLIMIT_NPROC applies; the interpreter must then be
        readable by that uid."""
        self.limits = limits
        self.workers = max(1, workers)
        self.python = python or os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]
        self.ro_binds = tuple(ro_binds)
        self.unsandboxed = allow_unsandboxed_code_execution
        self._slots: list[_Slot] = []
        self._free: list[_Slot] = []
        self._lock = threading.Lock()
        self._ready = threading.Semaphore(max(1, workers))
        self._cgroup_base: Path | None = None
        self._run_as: int | None = None  # uid/gid bwrap runs as, when root must drop privileges
        self._workdir = Path(tempfile.mkdtemp(prefix="prefsmith-sandbox-"))
        os.chmod(self._workdir, 0o700)
        self._can_mount = False
        try:
            if not self.unsandboxed:
                self._find_isolation(pids_cgroup)
            for _ in range(max(1, workers)):
                slot = _Slot(self._cgroup_base, limits.max_procs)
                self._slots.append(slot)
                self._free.append(slot)
            if not self.unsandboxed:
                self._can_mount = _can_mount_tmpfs(self._workdir)
                self._probe()
        except BaseException:
            self.close()
            raise

    # -- setup ---------------------------------------------------------------------------------------------------

    def _find_isolation(self, pids_cgroup: bool | None) -> None:
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed; {INSTALL_HINT}")
        if pids_cgroup is not False and (pids_cgroup or os.geteuid() == 0):
            self._cgroup_base = _find_pids_cgroup()
            if self._cgroup_base is None and pids_cgroup:
                raise SandboxUnavailable(
                    "pids_cgroup=True but no writable pids cgroup was found (/sys/fs/cgroup/pids, or cgroup v2 with "
                    "the pids controller); give the process a writable cgroup or pass pids_cgroup=None"
                )
        if self._cgroup_base is None and os.geteuid() == 0:
            # RLIMIT_NPROC is not enforced for root, and bwrap maps the sandbox's uid to its caller's: drop to an
            # unprivileged uid first so the process cap holds
            self._run_as = SANDBOX_UID
            os.chmod(self._workdir, 0o711)

    def rlimits(self, cpu_s: int | None = None) -> dict[str, int]:
        """The rlimits a job must set on itself before running untrusted code (names from the `resource` module).

        RLIMIT_NPROC is added only when no pids cgroup caps processes: it is not enforced for root, but for a
        non-root caller it counts the processes of the sandbox's own user namespace."""
        mib = 1024 * 1024
        limits = {
            "RLIMIT_CPU": cpu_s or self.limits.cpu_s,
            "RLIMIT_AS": self.limits.memory_mb * mib,
            "RLIMIT_FSIZE": self.limits.file_size_mb * mib,
            "RLIMIT_NOFILE": self.limits.max_open_files,
            "RLIMIT_CORE": 0,
        }
        if self._cgroup_base is None and not self.unsandboxed:
            limits["RLIMIT_NPROC"] = self.limits.max_procs + 2  # + bwrap and the judge
        return limits

    def _probe(self) -> None:
        probe = self.run(["{python}", "-I", "-S", "-c", "print('ok')"], {}, wall_s=30.0)
        if probe.stdout.strip() != b"ok":
            detail = probe.stderr.decode(errors="replace").strip()[-400:]
            raise SandboxUnavailable(
                f"bubblewrap is installed but could not start a sandbox ({detail or probe.returncode}); it needs "
                f"user namespaces (sysctl kernel.unprivileged_userns_clone=1, or a container run with "
                f"--privileged / a seccomp profile that allows unshare)"
                + (f"; bwrap runs as uid {SANDBOX_UID} here (root without a writable pids cgroup), so the "
                   f"interpreter {self.python} must be readable by that uid: pass python=" if self._run_as else "")
                + f"; {INSTALL_HINT}"
            )

    def close(self) -> None:
        for slot in self._slots:
            slot.remove()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running -------------------------------------------------------------------------------------------------

    def run(
        self,
        argv: list[str],
        files: dict[str, str | bytes],
        stdin: bytes = b"",
        wall_s: float | None = None,
    ) -> SandboxRun:
        """Run `argv` with `files` readable under `{job}` (=/sandbox inside). Placeholders in argv: `{python}`,
        `{job}`, `{channel_fd}` (a pipe whose contents come back as `SandboxRun.channel`)."""
        with self._ready:
            with self._lock:
                slot = self._free.pop()
            try:
                return self._launch(argv, files, stdin, wall_s or self.limits.wall_s, slot)
            finally:
                with self._lock:
                    self._free.append(slot)

    def _identity(self) -> dict:
        if self._run_as is None:
            return {}
        return {"user": self._run_as, "group": self._run_as, "extra_groups": []}

    def _environment(self) -> dict[str, str]:
        """bwrap's own environment: nothing of the caller's (API keys) goes near the box."""
        if self.unsandboxed:
            return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self._workdir)}
        return {"PATH": "/usr/local/bin:/usr/bin:/bin"}

    def _fresh_tmp(self) -> Path | None:
        """A new tmpfs capped in size and inodes for this launch's /tmp, when we may mount (root); else None (bwrap
        then makes a size-capped tmpfs itself, with the kernel's default inode count)."""
        if self.unsandboxed or not self._can_mount:
            return None
        path = Path(tempfile.mkdtemp(dir=self._workdir, prefix="tmp-"))
        if _mount_tmpfs(path, self.limits.tmp_mb, self.limits.tmp_inodes):
            return path
        path.rmdir()
        return None

    def _drop_tmp(self, path: Path | None) -> None:
        if path is not None:
            _unmount(path)
            shutil.rmtree(path, ignore_errors=True)

    def _bwrap_argv(self, job_dir: Path, tmp_dir: Path | None = None) -> list[str]:
        # the interpreter's install prefix, and for a virtual environment also the venv itself (read-only)
        real = os.path.realpath(self.python)
        prefixes = sorted({str(Path(self.python).parent.parent), str(Path(real).parent.parent)})
        argv = [
            "bwrap", "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--disable-userns", "--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
        ]
        for link in ("bin", "lib", "lib64", "sbin"):
            target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
            if target is not None:
                argv += ["--symlink", target, f"/{link}"]
            elif os.path.isdir(f"/{link}"):
                argv += ["--ro-bind", f"/{link}", f"/{link}"]
        # the private /tmp first: a venv or interpreter that lives under /tmp (a CI checkout) is bound on top of it
        if tmp_dir is not None:
            argv += ["--bind", str(tmp_dir), "/tmp"]
        else:
            argv += ["--size", str(self.limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        for path in (*prefixes, *self.ro_binds):
            if path not in ("/", "/usr") and not path.startswith("/usr/"):  # never the whole root
                argv += ["--ro-bind", path, path]
        argv += [
            "--ro-bind", str(job_dir), JOB_MOUNT,
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(self.limits.shm_mb * 1024 * 1024), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--remount-ro", "/",
            "--chdir", "/tmp", "--clearenv",
            "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "PYTHONHASHSEED", "0",
        ]
        return argv

    def _command(self, argv: list[str], files: dict, slot: _Slot, tmp_dir: Path | None,
                 **fmt) -> tuple[list[str], Path, Path | None]:
        """Write `files` into a fresh job dir and build the full command line (bwrap + cgroup join)."""
        job_dir = Path(tempfile.mkdtemp(dir=self._workdir))
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (job_dir / name).write_bytes(data)
        os.chmod(job_dir, 0o755)
        job = str(job_dir) if self.unsandboxed else JOB_MOUNT
        cmd = [a.format(python=self.python, job=job, **fmt) for a in argv]
        if self.unsandboxed:
            return cmd, job_dir, job_dir
        full = self._bwrap_argv(job_dir, tmp_dir) + cmd
        if slot.path is not None:  # join the slot's pids cgroup before bwrap forks anything
            full = ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"', str(slot.path / "cgroup.procs"), *full]
        return full, job_dir, None

    def _launch(self, argv: list[str], files: dict, stdin: bytes, wall_s: float, slot: _Slot) -> SandboxRun:
        chan_r, chan_w = os.pipe()
        tmp_dir = self._fresh_tmp()
        full, job_dir, cwd = self._command(argv, files, slot, tmp_dir, channel_fd=chan_w)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(chan_w,),
                start_new_session=True, cwd=cwd, env=self._environment(), **self._identity(),
            )
        except OSError as exc:
            os.close(chan_r)
            os.close(chan_w)
            shutil.rmtree(job_dir, ignore_errors=True)
            self._drop_tmp(tmp_dir)
            return SandboxRun(None, b"", str(exc).encode(), b"", extra={"launch_error": str(exc)})
        os.close(chan_w)
        try:
            out, err, chan, timed_out, truncated = self._communicate(proc, chan_r, stdin, start + wall_s)
        finally:
            os.close(chan_r)
            if proc.poll() is None:
                _kill_group(proc)
            proc.wait()
            leftover = slot.kill_all()
            shutil.rmtree(job_dir, ignore_errors=True)
            self._drop_tmp(tmp_dir)
        rc = None if timed_out or truncated else proc.returncode
        return SandboxRun(rc, out, err, chan, timed_out, truncated, time.monotonic() - start, leftover,
                          {"raw_returncode": proc.returncode})

    def _communicate(self, proc: subprocess.Popen, chan_r: int, stdin: bytes, deadline: float):
        cap = self.limits.output_bytes
        bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), chan_r: bytearray()}
        sel = selectors.DefaultSelector()
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        in_fd = proc.stdin.fileno()
        pending_in = memoryview(stdin)
        if pending_in:
            os.set_blocking(in_fd, False)
            sel.register(in_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        timed_out = truncated = False
        open_reads = 3
        while open_reads:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                fd = key.fd
                if fd == in_fd:
                    try:
                        n = os.write(fd, pending_in[:65536])
                        pending_in = pending_in[n:]
                    except (BrokenPipeError, BlockingIOError) as exc:
                        if isinstance(exc, BrokenPipeError):
                            pending_in = pending_in[:0]
                    if not pending_in:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    open_reads -= 1
                    continue
                bufs[fd] += chunk
                if len(bufs[fd]) > cap:
                    del bufs[fd][cap:]
                    truncated = True
            if truncated:
                break
        sel.close()
        if not proc.stdin.closed:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        if timed_out or truncated:
            _kill_group(proc)
        return (bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), bytes(bufs[chan_r]),
                timed_out, truncated)


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(path: Path, size_mb: int, inodes: int) -> bool:
    options = f"size={size_mb}m,nr_inodes={inodes},mode=1777".encode()
    return _libc().mount(b"tmpfs", str(path).encode(), b"tmpfs", 2 | 4, options) == 0  # MS_NOSUID | MS_NODEV


def _unmount(path: Path) -> None:
    _libc().umount2(str(path).encode(), 2)  # MNT_DETACH: gone for good once the box's mount namespace is


def _can_mount_tmpfs(workdir: Path) -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path(tempfile.mkdtemp(dir=workdir, prefix="probe-"))
    try:
        ok = _mount_tmpfs(probe, 1, 16)
        if ok:
            _unmount(probe)
        return ok
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill bwrap's process group; --die-with-parent and the PID namespace take the sandboxed tree with it. Waits
    (up to 2 s) until every process that was below bwrap is gone, the namespace's init included: the kernel lets
    init finish exiting only after every other process in its namespace has, so nothing of the sandbox is left
    running when this returns (also when a wrapper that drops privileges stands between us and bwrap)."""
    below = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _wait_gone(below)


def _wait_gone(pids: list[int], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.002)


def _descendants(pid: int) -> list[int]:
    """`pid`'s children, their children, and so on (read from /proc, main threads only)."""
    found, todo = [], [pid]
    while todo:
        try:
            children = [int(child) for task in Path(f"/proc/{todo.pop()}/task").glob("*/children")
                        for child in task.read_text().split()]
        except OSError:
            continue
        found += children
        todo += children
    return found


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
