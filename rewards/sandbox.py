"""Run untrusted programs inside an isolation layer: bubblewrap namespaces, a seccomp filter, pids and memory cgroups.

Each launch gets:
- its own user, PID, network, IPC, UTS and cgroup namespaces (`bwrap --unshare-all --unshare-user`): the network
  namespace has only `lo`, so nothing on the host (not even 127.0.0.1) or outside is reachable;
- a filesystem built from scratch and read-only: the system (`/usr`, the interpreter's prefix), a fresh `/proc` whose
  kernel knobs (`/proc/sys`, `sysrq-trigger`, `irq`, `bus`) are read-only and whose key lists (`/proc/keys`,
  `/proc/key-users`) are empty, a minimal `/dev`, the job's own files at `/sandbox`, no `/sys`; the only writable
  places are a private `/tmp` (a fresh tmpfs per launch, capped in size and, when we may mount one ourselves (root),
  in inodes: empty files cost kernel memory) and a size-capped `/dev/shm`. Nothing else of the host (home, /work,
  /etc, other temp dirs) is mounted, and nothing written survives the launch;
- its own PID namespace in which the launched program is PID 1 (`--as-pid-1`: no bwrap reaper in between), so a
  program that makes itself non-dumpable there (the code judge does) cannot be signalled, traced or read through
  /proc/1 by what it starts; a minimal environment (PATH, HOME), both for bwrap and inside, so no secret of the
  caller's environment is anywhere in the box;
- an unprivileged uid (65534) with no capabilities, no new user namespaces, a new session (no terminal access). bwrap
  maps the box's uid to the uid that started bwrap, so as root bwrap itself is started as host uid 65534 (after
  joining the slot's cgroups as root): the box is never host root;
- a seccomp filter (x86_64 and aarch64): the keyring calls (add_key, request_key, keyctl), io_uring, userfaultfd,
  perf_event_open, bpf and kexec fail with EPERM, and so does every call of another ABI (i386, x32, arm32);
- a cap on the number of processes: a pids cgroup per worker slot when running as root (RLIMIT_NPROC is not
  enforced for root), else RLIMIT_NPROC; a memory cgroup per worker slot capping the whole box (judge, program, its
  tmpfs, memfd and shared-memory pages) at `memory_mb`, when one is writable (as root); plus rlimits set before any
  untrusted code runs (CPU time, address space, file size, open files, no core dumps);
- a wall-clock limit that kills the whole tree: the PID namespace dies with its init, and any process still in
  the cgroup afterwards is killed;
- stdout/stderr captured up to a cap, with truncation flagged (the program is killed when it floods).

Without bubblewrap (or without a way to cap processes) `Sandbox` raises `SandboxUnavailable` saying how to
install it; running without isolation needs `allow_unsandboxed_code_execution=True`. docs/sandbox.md has the threat
model.
"""
from __future__ import annotations

import errno
import json
import os
import platform
import select
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = (
    "install bubblewrap with `bash scripts/install_sandbox.sh` (or `apt-get install -y bubblewrap`), or pass "
    "allow_unsandboxed_code_execution=True (CLI: --i-know-this-runs-untrusted-code-unsandboxed) to run untrusted "
    "code with no isolation at all"
)
SANDBOX_UID = 65534
JOB_MOUNT = "/sandbox"
CGROUP_BASE = "prefsmith-sandbox"  # per-slot cgroups are made under this folder of each hierarchy
# what the seccomp filter refuses with EPERM, per host architecture: its audit arch and syscall numbers (from
# asm/unistd_64.h and asm-generic/unistd.h): add_key, request_key, keyctl, io_uring_setup, io_uring_enter,
# io_uring_register, userfaultfd, perf_event_open, bpf, kexec_load, kexec_file_load
SECCOMP_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SECCOMP_DENIED = {
    "x86_64": (248, 249, 250, 425, 426, 427, 323, 298, 321, 246, 320),
    "aarch64": (217, 218, 219, 425, 426, 427, 282, 241, 280, 104, 294),
}


class SandboxUnavailable(RuntimeError):
    """The isolation layer cannot be set up on this machine."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-launch limits. Memory and sizes are in MiB."""

    wall_s: float = 10.0  # wall clock for the whole launch; the process tree is killed after it
    cpu_s: int = 10  # RLIMIT_CPU
    # RLIMIT_AS of the program (address space, so larger than the resident memory used), and the memory cgroup cap
    # of the whole box (judge + program + their tmpfs, memfd and shared-memory pages) where there is one
    memory_mb: int = 2048
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


def _find_cgroup_base(controller: str) -> Path | None:
    """A writable directory under which per-slot cgroups of `controller` ("pids" or "memory") can be made (cgroup v1
    or v2), else None."""
    limit_file = {"pids": ("pids.max",), "memory": ("memory.limit_in_bytes", "memory.max")}[controller]
    v1 = Path("/sys/fs/cgroup") / controller
    candidates = []
    if (v1 / "cgroup.procs").exists():
        candidates.append(v1 / CGROUP_BASE)
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if controllers.exists() and controller in controllers.read_text().split():
        candidates.append(v2 / CGROUP_BASE)
    for base in candidates:
        try:
            base.mkdir(exist_ok=True)
            if base.parent == v2:  # v2: the parent must delegate the controller to its children
                (base / "cgroup.subtree_control").write_text(f"+{controller}")
            probe = base / f"probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            probe.mkdir()
            ok = any((probe / name).exists() for name in limit_file)
            probe.rmdir()
            if ok:
                return base
        except OSError:
            continue
    return None


class _Slot:
    """One worker slot's cgroups: a pids cgroup and a memory cgroup, either may be absent (one folder for both on
    cgroup v2). A launch holds the slot for its whole life, so leftovers can be found and killed and what the
    memory cgroup saw is this launch's alone."""

    def __init__(self, pids_base: Path | None, memory_base: Path | None, limits: SandboxLimits):
        self.dirs: list[Path] = []  # every cgroup folder of the slot; a launch joins each
        self.memory: Path | None = None
        self.memory_cap = limits.memory_mb * 1024 * 1024
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            if pids_base is not None:
                self.dirs.append(pids_base / name)
                self.dirs[-1].mkdir()
                # + the judge, PID 1 of the box (bwrap, its monitor, stays outside)
                (self.dirs[-1] / "pids.max").write_text(str(limits.max_procs + 1))
            if memory_base is not None:
                self.memory = memory_base / name
                if self.memory not in self.dirs:
                    self.dirs.append(self.memory)
                    self.memory.mkdir()
                _cap_memory(self.memory, self.memory_cap)
        except BaseException:
            self.remove()
            raise
        self.hits = self.memory_hits()  # the count after the last launch: the slot is one launch's at a time

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.dirs:
            try:
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(found)

    def memory_hits(self) -> int:
        """How many times so far the slot's memory cgroup ran out and the kernel killed a process in it (v1: the
        `oom_kill` count of memory.oom_control; v2: `oom_kill` of memory.events); 0 without a memory cgroup."""
        if self.memory is None:
            return 0
        for name in ("memory.oom_control", "memory.events"):
            try:
                text = (self.memory / name).read_text()
            except FileNotFoundError:
                continue
            except OSError:
                return 0
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def settle(self, timeout_s: float = 1.0) -> None:
        """Wait (up to `timeout_s`) until the shared memory the last box left charged to the slot is freed, so the
        next box starts with its whole cap: its tmpfs and SysV segments go with its mount and IPC namespaces, which
        the kernel frees a little after the box's last process exits."""
        if self.memory is None:
            return
        deadline = time.monotonic() + timeout_s
        usage = self.memory / ("memory.usage_in_bytes" if (self.memory / "memory.usage_in_bytes").exists()
                               else "memory.current")
        try:
            while int(usage.read_text()) > self.memory_cap // 4 and time.monotonic() < deadline:
                stat = dict(line.split() for line in (self.memory / "memory.stat").read_text().splitlines())
                if int(stat.get("shmem", 0)) < self.memory_cap // 4:
                    return  # the rest is page cache, which the kernel reclaims when the next box needs it
                time.sleep(0.002)
        except (OSError, ValueError):
            pass

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
        self.kill_all()
        for path in self.dirs:
            try:
                path.rmdir()
            except OSError:
                pass


def _drop_command() -> list[str]:
    """The command root puts in front of bwrap to run it as SANDBOX_UID with no groups and no capabilities (setuid
    from root to a non-root uid clears them). GNU `chroot /` with a numeric `--userspec` does just setgroups, setgid,
    setuid and exec (about 0.5 ms); util-linux `setpriv` also clears the inheritable and bounding sets but looks the
    uid up in the user database first (about 1.2 ms here)."""
    chroot = shutil.which("chroot") or shutil.which("chroot", path="/usr/sbin:/sbin")
    if chroot and "coreutils" in subprocess.run([chroot, "--version"], capture_output=True, text=True).stdout:
        return [chroot, f"--userspec=+{SANDBOX_UID}:+{SANDBOX_UID}", "--groups=", "--skip-chdir", "/"]
    setpriv = shutil.which("setpriv") or shutil.which("setpriv", path="/usr/bin:/bin")
    if setpriv:
        return [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--"]
    raise SandboxUnavailable(
        f"as root the sandbox joins its cgroups and then starts bwrap as uid {SANDBOX_UID}, which needs GNU "
        f"coreutils `chroot` or util-linux `setpriv` on PATH; install one (apt-get install coreutils util-linux), "
        f"or run prefsmith as a non-root user"
    )


def _release(slots: list[_Slot], staged: dict[str, Path], workdir: Path) -> None:
    """Sandbox teardown: remove the slots' cgroups, unmount the staged binds, delete the private folder."""
    for slot in slots:
        slot.remove()
    for path in staged.values():
        _unmount(path)
    if any(os.path.ismount(path) for path in staged.values()):
        return  # never delete through a bind mount of the host's files; the folder is left behind
    shutil.rmtree(workdir, ignore_errors=True)


def _cap_memory(path: Path, cap: int) -> None:
    """Caps a memory cgroup at `cap` bytes of memory and none of swap, with the OOM killer on (a box over its cap is
    killed, not frozen)."""
    if (path / "memory.limit_in_bytes").exists():  # v1
        (path / "memory.limit_in_bytes").write_text(str(cap))
        if (path / "memory.memsw.limit_in_bytes").exists():  # swap accounting is on: memory + swap <= cap
            (path / "memory.memsw.limit_in_bytes").write_text(str(cap))
        (path / "memory.oom_control").write_text("0")
    else:  # v2
        (path / "memory.max").write_text(str(cap))
        if (path / "memory.swap.max").exists():
            (path / "memory.swap.max").write_text("0")


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The classic BPF program bwrap installs with `--seccomp` (struct sock_filter entries): EPERM for the calls in
    SECCOMP_DENIED and for every call of another ABI, everything else allowed. None on an architecture we have no
    syscall table for (the box then runs without a filter)."""
    machine = machine or platform.machine()
    if machine not in SECCOMP_ARCH:
        return None
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, ...JGE..., BPF_RET|BPF_K
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    denied = SECCOMP_DENIED[machine]
    prog = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, SECCOMP_ARCH[machine]),
        (ret, 0, 0, deny),  # another ABI (i386 through int 0x80, arm32)
        (ld, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":  # x32 calls carry the x86_64 arch with bit 30 set in the number
        prog.append((jge, len(denied) + 1, 0, 0x40000000))
    prog += [(jeq, len(denied) - i, 0, nr) for i, nr in enumerate(denied)]  # jump over the rest and `allow`
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


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
        memory_cgroup: bool | None = None,
    ):
        """`pids_cgroup`: cap processes with a pids cgroup (None: when running as root and one is writable). As root
        without one, bwrap itself runs as uid 65534 so that RLIMIT_NPROC applies. `memory_cgroup`: cap each box's
        memory at `limits.memory_mb` with a memory cgroup (None: when running as root and one is writable). As root
        the box's uid is always host uid 65534: what bwrap mounts must be readable by it (the interpreter's prefix is
        bind-mounted read-only into our private folder first, where root can mount)."""
        self.limits = limits
        self.workers = max(1, workers)
        self.python = python or os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]
        self.ro_binds = tuple(ro_binds)
        self.unsandboxed = allow_unsandboxed_code_execution
        self._slots: list[_Slot] = []
        self._free: list[_Slot] = []
        self._lock = threading.Lock()
        self._ready = threading.Semaphore(max(1, workers))
        self._pids_base: Path | None = None
        self._memory_base: Path | None = None
        self._run_as: int | None = None  # uid/gid bwrap is started as, when root has no cgroup to join first
        self._drop_privileges: list[str] = []  # as root with cgroups: what drops to SANDBOX_UID once they are joined
        self._staged: dict[str, Path] = {}  # read-only binds as root: host path -> our bind mount of it
        self._argv_parts: tuple[list[str], list[str], list[str]] | None = None
        self._seccomp = None if self.unsandboxed else seccomp_filter()
        self._workdir = Path(tempfile.mkdtemp(prefix="prefsmith-sandbox-"))
        os.chmod(self._workdir, 0o700)
        self._empty = self._workdir / "empty"  # covers /proc/keys and /proc/key-users in the box
        self._empty.touch(0o644)
        self._can_mount = False
        # cgroups, bind mounts and the folder go with close(), or at the latest when the object or the interpreter does
        self._release = weakref.finalize(self, _release, self._slots, self._staged, self._workdir)
        try:
            if not self.unsandboxed:
                self._find_isolation(pids_cgroup, memory_cgroup)
            for _ in range(max(1, workers)):
                slot = _Slot(self._pids_base, self._memory_base, limits)
                self._slots.append(slot)
                self._free.append(slot)
            if not self.unsandboxed:
                self._can_mount = _can_mount_tmpfs(self._workdir)
                if self._can_mount and (self._run_as or self._drop_privileges):
                    self._stage_binds()
                self._probe()
        except BaseException:
            self.close()
            raise

    # -- setup ---------------------------------------------------------------------------------------------------

    def _find_isolation(self, pids_cgroup: bool | None, memory_cgroup: bool | None) -> None:
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed; {INSTALL_HINT}")
        root = os.geteuid() == 0
        if pids_cgroup is not False and (pids_cgroup or root):
            self._pids_base = _find_cgroup_base("pids")
            if self._pids_base is None and pids_cgroup:
                raise SandboxUnavailable(
                    "pids_cgroup=True but no writable pids cgroup was found (/sys/fs/cgroup/pids, or cgroup v2 with "
                    "the pids controller); give the process a writable cgroup or pass pids_cgroup=None"
                )
        if memory_cgroup is not False and (memory_cgroup or root):
            self._memory_base = _find_cgroup_base("memory")
            if self._memory_base is None and memory_cgroup:
                raise SandboxUnavailable(
                    "memory_cgroup=True but no writable memory cgroup was found (/sys/fs/cgroup/memory, or cgroup v2 "
                    "with the memory controller); give the process a writable cgroup or pass memory_cgroup=None"
                )
        if root:
            # bwrap maps the box's uid to the uid that starts it: never root. With cgroups to join, root joins them
            # and then drops to SANDBOX_UID; without, bwrap is started as SANDBOX_UID (and RLIMIT_NPROC, not
            # enforced for root, caps processes)
            if self._pids_base is None and self._memory_base is None:
                self._run_as = SANDBOX_UID
            else:
                self._drop_privileges = _drop_command()
            os.chmod(self._workdir, 0o711)

    def _stage_binds(self) -> None:
        """As root, bind-mount each read-only path of the box (the interpreter's prefix, `ro_binds`) read-only under
        our private folder, which SANDBOX_UID can enter: bwrap, started as that uid, binds from there (a prefix
        under /root would be out of its reach otherwise). A path that cannot be staged is bound directly."""
        for path in self._ro_sources():
            staged = self._workdir / "ro" / str(len(self._staged))
            staged.mkdir(parents=True)
            os.chmod(staged.parent, 0o711)
            if _bind_read_only(Path(path), staged):
                self._staged[path] = staged
            else:
                staged.rmdir()

    def _ro_sources(self) -> list[str]:
        """The host paths bound read-only into the box besides /usr: the interpreter's install prefix, for a virtual
        environment also the venv itself, and `ro_binds`."""
        real = os.path.realpath(self.python)
        prefixes = sorted({str(Path(self.python).parent.parent), str(Path(real).parent.parent)})
        return [path for path in dict.fromkeys((*prefixes, *self.ro_binds))
                if path not in ("/", "/usr") and not path.startswith("/usr/")]  # never the whole root

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
        if self._pids_base is None and not self.unsandboxed:
            limits["RLIMIT_NPROC"] = self.limits.max_procs + 2  # + bwrap and the judge
        return limits

    def _probe(self) -> None:
        probe = self.run(["{python}", "-I", "-S", "-c", "print('ok')"], {}, wall_s=30.0)
        if probe.stdout.strip() != b"ok":
            detail = probe.stderr.decode(errors="replace").strip()[-400:]
            unstaged = [path for path in self._ro_sources() if path not in self._staged]
            raise SandboxUnavailable(
                f"bubblewrap is installed but could not start a sandbox ({detail or probe.returncode}); it needs "
                f"user namespaces (sysctl kernel.unprivileged_userns_clone=1, or a container run with "
                f"--privileged / a seccomp profile that allows unshare)"
                + (f"; bwrap runs as uid {SANDBOX_UID} here (as root the box is never host root), so the "
                   f"interpreter {self.python} and {unstaged} must be readable by that uid: pass python="
                   if (self._run_as or self._drop_privileges) and unstaged else "")
                + f"; {INSTALL_HINT}"
            )

    def close(self) -> None:
        self._release()

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

    def _bwrap_argv(self, job_dir: Path, tmp_dir: Path | None = None, fds: dict[str, int] | None = None) -> list[str]:
        """bwrap's command line; `fds`: its --seccomp, --info-fd and --block-fd descriptors, where used."""
        if self._argv_parts is None:  # the parts that are the same for every launch, worked out once
            self._argv_parts = self._static_argv()
        system, binds, rest = self._argv_parts
        # the private /tmp before the binds: a venv or interpreter under /tmp (a CI checkout) is bound on top of it
        if tmp_dir is not None:
            tmp = ["--bind", str(tmp_dir), "/tmp"]
        else:
            tmp = ["--size", str(self.limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        argv = [*system, *tmp, *binds, "--ro-bind", str(job_dir), JOB_MOUNT, *rest]
        for option, fd in (fds or {}).items():
            argv += [option, str(fd)]
        return argv

    def _static_argv(self) -> tuple[list[str], list[str], list[str]]:
        system = [
            "bwrap", "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--disable-userns", "--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
        ]
        for link in ("bin", "lib", "lib64", "sbin"):
            target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
            if target is not None:
                system += ["--symlink", target, f"/{link}"]
            elif os.path.isdir(f"/{link}"):
                system += ["--ro-bind", f"/{link}", f"/{link}"]
        binds = []
        for path in self._ro_sources():
            binds += ["--ro-bind", str(self._staged.get(path, path)), path]
        rest = [
            # a fresh /proc whose kernel knobs are read-only (bound from the host's /proc, the same files: what
            # /proc/sys/net shows follows the reader's network namespace) and whose key lists are empty
            "--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys",
            "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger", "--ro-bind-try", "/proc/irq", "/proc/irq",
            "--ro-bind-try", "/proc/bus", "/proc/bus",
            "--ro-bind-try", str(self._empty), "/proc/keys", "--ro-bind-try", str(self._empty), "/proc/key-users",
            "--dev", "/dev",
            "--size", str(self.limits.shm_mb * 1024 * 1024), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--remount-ro", "/",
            "--chdir", "/tmp", "--clearenv",
            "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "PYTHONHASHSEED", "0",
        ]
        return system, binds, rest

    def _command(self, argv: list[str], files: dict, tmp_dir: Path | None, fds: dict[str, int],
                 **fmt) -> tuple[list[str], Path, Path | None]:
        """Write `files` into a fresh job dir and build the full command line (privilege drop, bwrap)."""
        job_dir = Path(tempfile.mkdtemp(dir=self._workdir))
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (job_dir / name).write_bytes(data)
        os.chmod(job_dir, 0o755)
        job = str(job_dir) if self.unsandboxed else JOB_MOUNT
        cmd = [a.format(python=self.python, job=job, **fmt) for a in argv]
        if self.unsandboxed:
            return cmd, job_dir, job_dir
        return [*self._drop_privileges, *self._bwrap_argv(job_dir, tmp_dir, fds), *cmd], job_dir, None

    def _seccomp_pipe(self) -> int | None:
        """A pipe holding the seccomp program, for `bwrap --seccomp` to read (one per launch: bwrap reads to EOF)."""
        if self._seccomp is None:
            return None
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, self._seccomp)  # a few hundred bytes: fits the pipe's buffer
        finally:
            os.close(write_fd)
        return read_fd

    def _launch(self, argv: list[str], files: dict, stdin: bytes, wall_s: float, slot: _Slot) -> SandboxRun:
        chan_r, chan_w = os.pipe()
        fds: dict[str, int] = {}  # bwrap's descriptors, closed here once it started
        seccomp_fd = self._seccomp_pipe()
        if seccomp_fd is not None:
            fds["--seccomp"] = seccomp_fd
        info_r = block_w = None
        if slot.dirs and not self.unsandboxed:
            # bwrap reports its box's pid on --info-fd and holds it before exec until --block-fd is written: we move
            # the box into the slot's cgroups in between, before anything of the job runs
            info_r, fds["--info-fd"] = os.pipe()
            fds["--block-fd"], block_w = os.pipe()
        tmp_dir = self._fresh_tmp()
        full, job_dir, cwd = self._command(argv, files, tmp_dir, fds, channel_fd=chan_w)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(chan_w, *fds.values()), start_new_session=True, cwd=cwd, env=self._environment(),
                **self._identity(),
            )
        except OSError as exc:
            for fd in (chan_r, chan_w, *fds.values(), info_r, block_w):
                if fd is not None:
                    os.close(fd)
            shutil.rmtree(job_dir, ignore_errors=True)
            self._drop_tmp(tmp_dir)
            return SandboxRun(None, b"", str(exc).encode(), b"", extra={"launch_error": str(exc)})
        for fd in (chan_w, *fds.values()):
            os.close(fd)
        try:
            if info_r is not None:
                joined = _join_cgroups(proc, info_r, slot, start + wall_s)
                if joined is not True:  # never let the box run outside its cgroups
                    _kill_group(proc)
                    for pipe in (proc.stdin, proc.stdout, proc.stderr):
                        pipe.close()
                    return SandboxRun(None, b"", joined.encode(), b"", extra={"launch_error": joined})
                try:
                    os.write(block_w, b"1")
                except BrokenPipeError:
                    pass  # bwrap is gone already; its exit status tells
            out, err, chan, timed_out, truncated = self._communicate(proc, chan_r, stdin, start + wall_s)
        finally:
            for fd in (chan_r, info_r, block_w):
                if fd is not None:
                    os.close(fd)
            if proc.poll() is None:
                _kill_group(proc)
            proc.wait()
            leftover = slot.kill_all()
            shutil.rmtree(job_dir, ignore_errors=True)
            self._drop_tmp(tmp_dir)
            slot.settle()
        rc = None if timed_out or truncated else proc.returncode
        extra = {"raw_returncode": proc.returncode}
        if slot.memory is not None:  # the box ran out of its memory cgroup's cap and the kernel killed in it
            hits, slot.hits = slot.hits, slot.memory_hits()
            extra["memory_limit"] = slot.hits > hits
        return SandboxRun(rc, out, err, chan, timed_out, truncated, time.monotonic() - start, leftover, extra)

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


def _join_cgroups(proc: subprocess.Popen, info_r: int, slot: _Slot, deadline: float) -> bool | str:
    """Read the box's pid from bwrap's --info-fd and move the box into every cgroup of `slot`; True, or
    why not (bwrap failed before reporting, or a cgroup refused)."""
    data = b""
    while True:
        try:
            pid = json.loads(data)["child-pid"]
            break
        except (ValueError, KeyError):
            pass
        if not _readable(info_r, deadline):
            return "bwrap did not report its sandbox in time"
        chunk = os.read(info_r, 4096)
        if not chunk:
            return "bwrap exited before starting the sandbox"
        data += chunk
    try:  # the box's init alone: all of the job descends from it (bwrap, its monitor, stays outside, as it is
        # trusted and small; each move costs the host an RCU grace period, ~4 ms on cgroup v1)
        for path in slot.dirs:
            (path / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        return f"could not move the sandbox into its cgroup {path}: {exc}"
    return True


def _readable(fd: int, deadline: float) -> bool:
    return bool(select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0])


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(path: Path, size_mb: int, inodes: int) -> bool:
    options = f"size={size_mb}m,nr_inodes={inodes},mode=1777".encode()
    return _libc().mount(b"tmpfs", str(path).encode(), b"tmpfs", 2 | 4, options) == 0  # MS_NOSUID | MS_NODEV


def _bind_read_only(source: Path, target: Path) -> bool:
    """Bind `source` on `target` read-only (nosuid, nodev); True when `target` is now a read-only view of it. Not
    recursive: a mount below `source` would stay writable in the view."""
    libc = _libc()
    ms_rdonly, ms_nosuid, ms_nodev, ms_remount, ms_bind = 1, 2, 4, 32, 4096
    if libc.mount(str(source).encode(), str(target).encode(), None, ms_bind, None) != 0:
        return False
    flags = ms_remount | ms_bind | ms_rdonly | ms_nosuid | ms_nodev
    if libc.mount(None, str(target).encode(), None, flags, None) == 0 and os.statvfs(target).f_flag & os.ST_RDONLY:
        return True
    _unmount(target)
    return False


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
