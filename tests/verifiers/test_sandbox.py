"""The code sandbox against hostile code: each attack scores 0 within its limits and leaves the host as it was;
correct code scores 1."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from rlreason.verifiers.code import passing_tests
from rlreason.verifiers.sandbox import PROJECT, SandboxLimits, run_python

LIMITS = SandboxLimits(wall_s=6.0, cpu_s=2, memory_bytes=512 << 20, max_processes=8, output_bytes=1 << 16)
ADD = {"tests": ["assert candidate(1, 2) == 3", "assert candidate(-4, 4) == 0"], "entry_point": "add"}
CORRECT = "def add(a, b):\n    return a + b\n"
NOBODY = 65534


def nobody_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == NOBODY:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def listener():
    """A TCP server on the host's loopback that counts the connections it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    yield server
    server.close()


def accepted(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
        return True
    except (TimeoutError, socket.timeout):
        return False


def test_correct_code_passes_every_test_and_wrong_code_some():
    assert passing_tests(CORRECT, ADD, LIMITS) == 2
    assert passing_tests("def add(a, b):\n    return 3\n", ADD, LIMITS) == 1
    assert passing_tests("def add(a, b):\n    return a +\n", ADD, LIMITS) == 0  # does not parse


def test_a_home_under_tmp_and_a_python_installation_in_a_closed_folder_still_run(tmp_path, monkeypatch):
    """$HOME under /tmp (already replaced by the sandbox's own /tmp, nothing to cover) and, as root, a Python
    installation under a folder `nobody` may not enter (/root for a root-owned pyenv): the code still runs, and
    the home's files stay out of its sight."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "secret.txt").write_text("42")
    assert passing_tests(CORRECT, ADD, LIMITS) == 2
    assert passing_tests(f"open({str(tmp_path / 'secret.txt')!r}).read()\n" + CORRECT, ADD, LIMITS) == 0


def test_printing_the_result_line_without_the_nonce_earns_nothing():
    forged = "print('0' * 32, 2)\nprint(open('/proc/self/environ').read())\nraise SystemExit\n" + CORRECT
    assert passing_tests(forged, ADD, LIMITS) == 0


@pytest.mark.parametrize("attack, code", [
    ("infinite loop", "while True:\n    pass\n"),
    ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"),
    ("memory hog", "hoard = []\nwhile True:\n    hoard.append(bytearray(1 << 24))\n"),
    ("huge output", "while True:\n    print('x' * 100000)\n"),
    ("sleep past the wall clock", "import time\ntime.sleep(60)\n"),
])
def test_runaway_code_is_stopped_within_its_limits_and_leaves_nothing_behind(attack, code):
    start = time.monotonic()
    assert passing_tests(code + CORRECT, ADD, LIMITS) == 0
    assert time.monotonic() - start < LIMITS.wall_s + 3
    time.sleep(0.2)  # the namespace's processes are killed by the kernel as its init ends
    assert nobody_processes() == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


def test_the_network_is_unreachable(listener):
    port = listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n" + CORRECT
    assert passing_tests(code, ADD, LIMITS) == 0
    assert not accepted(listener)


def test_files_outside_the_private_tmp_can_be_neither_written_nor_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("42")
    escaped = tmp_path / "escaped.txt"
    project_file = PROJECT / "escaped_from_the_sandbox.txt"
    code = (f"open({str(escaped)!r}, 'w').write('x')\n"  # lands in the sandbox's own /tmp
            f"open({str(project_file)!r}, 'w').write('x')\n" + CORRECT)
    assert passing_tests(code, ADD, LIMITS) == 0
    assert not escaped.exists() and not project_file.exists()
    for readable in (PROJECT / "README.md", secret, Path.home() / ".bashrc"):
        assert passing_tests(f"open({str(readable)!r}).read()\n" + CORRECT, ADD, LIMITS) == 0, readable


def test_code_cannot_signal_its_parent_or_any_host_process():
    sentinel = subprocess.Popen(["sleep", "30"])
    try:
        code = (f"import os, signal\nos.kill({sentinel.pid}, signal.SIGKILL)\n"
                f"os.kill(os.getppid(), signal.SIGKILL)\n" + CORRECT)
        assert passing_tests(code, ADD, LIMITS) == 0
        # Every process it may signal: none but itself (which kill(-1) skips) and init (which it may not).
        run = run_python("import os, signal\nos.kill(-1, signal.SIGKILL)\n", LIMITS)
        assert run.exit_code == 1 and "ProcessLookupError" in run.stderr
        assert sentinel.poll() is None
    finally:
        sentinel.kill()
        sentinel.wait()


def test_the_code_runs_as_nobody_in_a_pid_namespace_of_its_own():
    run = run_python("import os\nprint(os.getuid(), os.getpid(), sorted(p for p in os.listdir('/proc') "
                     "if p.isdigit()))\n", LIMITS)
    uid, pid, *_ = run.stdout.split(maxsplit=2)
    assert run.exit_code == 0
    assert int(pid) == 2  # the launcher is the namespace's init, pid 1
    assert int(uid) == (NOBODY if os.getuid() == 0 else os.getuid())
