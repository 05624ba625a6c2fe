"""The sandbox as the host sees it: the box's host uid, the kernel knobs under /proc, keyrings, other syscall ABIs,
and the memory cgroup that caps what RLIMIT_AS does not (memfd, SysV shared memory, tmpfs pages). Real bwrap, real
cgroups; the root-only tests are the ones whose setup (cgroups, dropping to uid 65534) only root has."""
from __future__ import annotations

import ctypes
import json
import os
import platform
import threading
import time
import uuid
from pathlib import Path

import pytest

import rewards.sandbox as sandbox_module
from rewards.sandbox import SECCOMP_DENIED, Sandbox, SandboxLimits

ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not ROOT, reason="cgroups and the drop to uid 65534 are what root sets up")
ARCH = platform.machine()
KEYRING_CALLS = dict(zip(("add_key", "request_key", "keyctl"), SECCOMP_DENIED.get(ARCH, ())))
# both ways root can start a box: joining cgroups then dropping to 65534 (the default), and bwrap started as 65534
# with no cgroup at all (`_run_as`, what a root without writable cgroups gets)
SETUPS = {
    "cgroups": {},
    "no_cgroups": {"pids_cgroup": False, "memory_cgroup": False},
}


def run_python(sandbox: Sandbox, code: str, *args: str, wall_s: float = 20.0):
    return sandbox.run(["{python}", "-I", "-S", "{job}/program.py", *args], {"program.py": code}, wall_s=wall_s)


def status_ids(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, _, value in (line.partition(":") for line in lines)
            if key in ("Uid", "Gid", "Groups")}


def host_view_of_a_box(sandbox: Sandbox) -> dict[int, dict]:
    """The ids, as the host sees them, of every process of a running box (bwrap and the program), found by a marker
    in their command lines once the program runs."""
    marker = f"prefsmith-uid-{uuid.uuid4().hex}"
    thread = threading.Thread(target=run_python, args=(sandbox, "import time; time.sleep(0.6)", marker))
    thread.start()
    deadline, seen = time.monotonic() + 10, {}
    while time.monotonic() < deadline:
        seen, program_runs = {}, False
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if entry.name.isdigit() and marker.encode() in cmdline:
                    seen[int(entry.name)] = status_ids(int(entry.name))
                    program_runs |= not cmdline.startswith(b"bwrap")
            except OSError:
                pass
        if program_runs:
            break
        time.sleep(0.01)
    thread.join()
    assert len(seen) >= 2, seen  # bwrap and the program
    return seen


def assert_unprivileged(seen: dict[int, dict]) -> None:
    for pid, ids in seen.items():
        assert ids["Uid"] == ["65534"] * 4 and ids["Gid"] == ["65534"] * 4, (pid, ids)  # real, effective, saved, fs
        assert ids["Groups"] == [], (pid, ids)


@root_only
@pytest.mark.parametrize("setup", SETUPS)
def test_box_and_bwrap_never_run_as_host_root(setup):
    with Sandbox(workers=1, **SETUPS[setup]) as sandbox:
        assert_unprivileged(host_view_of_a_box(sandbox))


@root_only
def test_drop_through_setpriv_when_there_is_no_gnu_chroot(monkeypatch):
    real_which = sandbox_module.shutil.which
    monkeypatch.setattr(sandbox_module.shutil, "which",
                        lambda name, *a, **k: None if name == "chroot" else real_which(name, *a, **k))
    with Sandbox(workers=1) as sandbox:
        assert Path(sandbox._drop_privileges[0]).name == "setpriv"
        seen = host_view_of_a_box(sandbox)
    assert_unprivileged(seen)


WALK_KNOBS = r"""
import json, os
writable, checked = [], 0
paths = ["/proc/sysrq-trigger"]
for top in ("/proc/sys", "/proc/irq", "/proc/bus", "/sys"):
    for folder, _, names in os.walk(top):
        paths += [os.path.join(folder, name) for name in names]
for path in paths:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)   # opening for write is enough to tell; nothing is written
    except OSError:
        checked += 1
        continue
    os.close(fd)
    writable.append(path)
print(json.dumps({"writable": writable, "checked": checked, "sys": os.path.exists("/sys")}))
"""


@pytest.mark.parametrize("setup", SETUPS)
def test_proc_sys_and_kernel_knobs_are_read_only(setup):
    if setup == "no_cgroups" and not ROOT:
        pytest.skip("the no-cgroup setup differs from the default only for root")
    maxkeys = int(Path("/proc/sys/kernel/keys/maxkeys").read_text())
    with Sandbox(workers=1, **SETUPS[setup]) as sandbox:
        walked = run_python(sandbox, WALK_KNOBS)
        direct = run_python(sandbox, f"open('/proc/sys/kernel/keys/maxkeys', 'w').write('{maxkeys + 1}')")
    report = json.loads(walked.stdout)
    assert report["checked"] > 500 and report["writable"] == [], report  # /proc/sys alone has ~1000 files
    assert report["sys"] is False
    assert direct.returncode == 1 and b"Read-only file system" in direct.stderr, direct
    assert int(Path("/proc/sys/kernel/keys/maxkeys").read_text()) == maxkeys


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _plant_key(description: str) -> int:
    """A user key in a new session keyring of the calling thread (credentials are per thread: the rest of the test
    process keeps its own), as a model of a host secret the box's launcher possesses."""
    assert _libc.syscall(KEYRING_CALLS["keyctl"], 1, None) > 0  # KEYCTL_JOIN_SESSION_KEYRING, anonymous
    key = _libc.syscall(KEYRING_CALLS["add_key"], b"user", description.encode(), b"hunter2", 7, -3)  # session
    assert key > 0, ctypes.get_errno()
    return key


KEYRING_PROBE = r"""
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    result = libc.syscall(nr, *args)
    return [result, ctypes.get_errno()]
add_key, request_key, keyctl = {nrs}
print(json.dumps({{
    "add_key": call(add_key, b"user", b"{row_key}", b"x", 1, -3),
    "request_key": call(request_key, b"user", b"{host_key}", None, 0),
    "session": call(keyctl, 0, -3, 0),                              # KEYCTL_GET_KEYRING_ID
    "read": call(keyctl, 11, {key_id}, None, 0),                    # KEYCTL_READ of the host key
    "search": call(keyctl, 10, -3, b"user", b"{row_key}", 0),        # KEYCTL_SEARCH for the row's own key
    "proc_keys": open("/proc/keys").read(),
    "key_users": open("/proc/key-users").read(),
}}))
"""


@pytest.mark.skipif(ARCH not in SECCOMP_DENIED, reason="no seccomp filter on this architecture")
def test_keyrings_are_out_of_reach():
    host_key, row_key = f"prefsmith-test-{uuid.uuid4().hex[:8]}", f"prefsmith-row-{uuid.uuid4().hex[:8]}"
    reports, errors = [], []

    def planted_and_run():  # one thread: it plants the key, then launches the boxes, which inherit its keyrings
        try:
            key_id = _plant_key(host_key)
            with Sandbox(workers=1) as sandbox:
                probe = KEYRING_PROBE.format(nrs=tuple(KEYRING_CALLS.values()), row_key=row_key, host_key=host_key,
                                             key_id=key_id)
                for _ in range(2):  # the second box is the next row: it finds nothing of the first either
                    reports.append(json.loads(run_python(sandbox, probe).stdout))
            assert b"hunter2" in _read_key(key_id)  # the key was there, readable by its owner, all along
            _libc.syscall(KEYRING_CALLS["keyctl"], 3, key_id)  # KEYCTL_REVOKE: clean up
        except BaseException as exc:
            errors.append(exc)

    users_before = _key_users(65534)
    thread = threading.Thread(target=planted_and_run)
    thread.start()
    thread.join()
    assert not errors, errors
    for report in reports:
        for call in ("add_key", "request_key", "session", "read", "search"):
            assert report[call] == [-1, 1], (call, report)  # EPERM from the filter, whatever the keyring holds
        assert host_key not in report["proc_keys"] and row_key not in report["proc_keys"]
        assert report["proc_keys"] == "" and report["key_users"] == ""
    assert _key_users(65534) == users_before  # no key was made for the box's host uid
    assert row_key not in Path("/proc/keys").read_text()


def _read_key(key_id: int) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = _libc.syscall(KEYRING_CALLS["keyctl"], 11, key_id, buf, 64)
    return buf.raw[:max(n, 0)]


def _key_users(uid: int) -> str | None:
    for line in Path("/proc/key-users").read_text().splitlines():
        if line.split(":")[0].strip() == str(uid):
            return line
    return None


OTHER_ABIS = r"""
import ctypes, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
x32 = libc.syscall(0x40000000 | 39)          # getpid through the x32 ABI (ENOSYS on a kernel without it)
x32_errno = ctypes.get_errno()
read_fd, write_fd = os.pipe()
child = os.fork()
if child == 0:                                # i386 getpid through int 0x80, in a child: SIGSEGV without ia32
    code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")   # mov eax, 20; int 0x80; ret
    getpid32 = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(code)))
    os.write(write_fd, str(getpid32()).encode())
    os._exit(0)
os.close(write_fd)
_, status = os.waitpid(child, 0)
print(x32, x32_errno, os.read(read_fd, 100).decode() or "signal", os.getpid())
"""


@pytest.mark.skipif(ARCH != "x86_64", reason="the x32 and i386 entry points exist on x86_64")
def test_seccomp_refuses_other_abis():
    with Sandbox(workers=1) as sandbox:
        run = run_python(sandbox, OTHER_ABIS)
    x32, x32_errno, i386, pid = run.stdout.split()
    assert (x32, x32_errno) == (b"-1", b"1"), run  # EPERM: the filter answered before the kernel's dispatch
    assert i386 in (b"-1", b"signal") and i386 != pid, run  # never the pid: the call did not run


MIB = 1024 * 1024
# each fills memory that RLIMIT_AS does not count, in 16 MiB steps up to 768 MiB, printing the total after each step
FILLERS = {
    "memfd": """
fds = []
def step(chunk):
    fd = os.memfd_create("fill")
    os.write(fd, chunk)
    fds.append(fd)
""",
    "sysv_shm": """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def step(chunk):
    segment = libc.shmget(0, len(chunk), 0o1000 | 0o600)       # IPC_CREAT; never removed
    if segment < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    address = libc.shmat(segment, None, 0)
    ctypes.memmove(address, chunk, len(chunk))
    libc.shmdt(ctypes.c_void_p(address))                      # detached: the segment stays, nobody maps it
""",
    "tmp_files": """
def step(chunk, n=[0]):
    n[0] += 1
    with open(f"/tmp/fill{n[0]}", "wb") as f:
        f.write(chunk)
""",
    "dev_shm_files": """
def step(chunk, n=[0]):
    n[0] += 1
    with open(f"/dev/shm/fill{n[0]}", "wb") as f:
        f.write(chunk)
""",
}
FILL_LOOP = """
import os
chunk = b"x" * (16 << 20)
total = 0
try:
    while total < 768:
        step(chunk)
        total += 16
        print(total, flush=True)
except OSError as exc:
    print("failed", exc.errno, flush=True)
"""
HONEST = """
blocks = [bytearray(b"y" * (10 << 20)) for _ in range(10)]   # 100 MiB, resident
print(sum(len(b) for b in blocks) >> 20)
"""


@root_only
def test_memory_cgroup_caps_what_rlimit_as_does_not():
    # /tmp and /dev/shm are far larger than the cap here, so only the memory cgroup stands in the way
    limits = SandboxLimits(memory_mb=256, tmp_mb=1024, shm_mb=1024)
    with Sandbox(limits, workers=1) as sandbox:
        slot = sandbox._slots[0]
        if slot.memory is None:
            pytest.skip("no writable memory cgroup here")
        v1 = (slot.memory / "memory.limit_in_bytes").exists()
        usage = slot.memory / ("memory.usage_in_bytes" if v1 else "memory.current")
        assert int((slot.memory / ("memory.limit_in_bytes" if v1 else "memory.max")).read_text()) == 256 * MIB
        for name, filler in FILLERS.items():
            run = run_python(sandbox, filler + FILL_LOOP)
            lines = run.stdout.split()
            held = max([int(x) for x in lines if x.isdigit()], default=0)
            killed_or_failed = run.returncode in (-9, 137) or b"failed" in lines  # 137: bwrap's child was killed
            assert killed_or_failed and held <= 256, (name, run)  # never more than the cap
            assert run.extra["memory_limit"] is True, (name, run)
            honest = run_python(sandbox, HONEST)  # the next row in the same slot has its whole cap again
            assert honest.stdout == b"100\n" and honest.extra["memory_limit"] is False, (name, honest)
            # nothing of what the filler held stays charged once its box is gone
            assert int(usage.read_text()) < 64 * MIB


@root_only
def test_close_removes_slot_cgroups_and_binds():
    sandbox = Sandbox(workers=2)
    dirs = [path for slot in sandbox._slots for path in slot.dirs]
    staged = list(sandbox._staged.values())
    workdir = sandbox._workdir
    if not all(slot.memory for slot in sandbox._slots):
        sandbox.close()
        pytest.skip("no writable memory cgroup here")
    assert len(dirs) in (2, 4) and all(path.is_dir() for path in dirs)  # pids and memory: v1 two folders, v2 one
    assert all(os.statvfs(path).f_flag & os.ST_RDONLY for path in staged)  # the interpreter's prefix, read-only
    sandbox.close()
    assert not any(path.exists() for path in dirs)
    assert all(path.parent.is_dir() for path in dirs)  # the shared base folders stay
    assert not any(os.path.ismount(path) for path in staged) and not workdir.exists()
    assert str(workdir) not in Path("/proc/self/mountinfo").read_text()
