"""Running untrusted Python (a completion's program and its tests) in a sandbox, for code-execution rewards.

Every run is a fresh process tree in new Linux namespaces, made by util-linux `unshare`:
- network: a network namespace of its own with no interface up, so every connect() fails;
- processes: a PID namespace whose init is `sandbox_init`; when the code's process ends, the namespace ends
  and every process left in it (a fork bomb's, a daemon's) is killed; the code sees no process outside it
  (a fresh /proc), so it can signal none;
- files: a mount namespace in which /tmp, /var/tmp and /dev/shm are fresh size-capped tmpfs, the only
  writable places, and the project folder, the folder holding it (with ../shared), $HOME and (as root) a
  folder above the Python installation that `nobody` may not enter are covered by empty read-only tmpfs; the
  Python installation is bound back read-only where it lies under them;
- user: started as root, the code runs as `nobody`, so the process limit holds (root is exempt from it);
  started as another user, in a user namespace, with the limit counted above that user's own processes;
- limits: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), processes (RLIMIT_NPROC), file size
  (RLIMIT_FSIZE), output bytes (the parent stops reading and kills the tree past them), wall seconds (the
  parent kills the tree); the tree is killed with its parent if the parent dies (`unshare --kill-child`).

What it does not defend against: the code and its test harness share one interpreter, so code that reads the
harness's frames could forge its result (the result line carries a per-run nonce that the code cannot print
by guessing); and CPU work by many short-lived processes is bounded only by the process and wall limits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rlreason.verifiers.sandbox_init import PRIVATE_TMP

INIT = Path(__file__).with_name("sandbox_init.py")
PROJECT = Path(__file__).resolve().parents[2]


class SandboxUnavailable(RuntimeError):
    """This machine cannot make the sandbox's namespaces; code rewards would run unconfined, so none run."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: int = 5
    memory_bytes: int = 1 << 30  # address space of each process
    max_processes: int = 16
    output_bytes: int = 1 << 16  # stdout + stderr read back; more kills the run
    file_bytes: int = 1 << 24  # largest file written, and the size of each private tmpfs


@dataclasses.dataclass(frozen=True)
class SandboxRun:
    exit_code: int  # 128 + signal when killed; -1 when the parent killed the tree (see timed_out / overflowed)
    stdout: str
    stderr: str
    timed_out: bool
    overflowed: bool  # wrote more than output_bytes
    wall_s: float


def _python() -> str:
    return os.path.realpath(sys.executable)


def _closed_to_others(prefix: str) -> set[str]:
    """The outermost folder above the Python installation `prefix` that other users may not enter (a root-owned
    pyenv in /root, say), if any: covered and the installation bound back, `nobody` can run it."""
    closed = [str(parent) for parent in reversed(Path(prefix).parents)
              if str(parent) != "/" and not os.stat(parent).st_mode & 0o001]
    return set(closed[:1])


def _hidden_folders() -> list[str]:
    """The folders covered in the sandbox: the project, the folder holding it, $HOME, and where the code's user
    could not reach the Python installation otherwise. One under /tmp, /var/tmp or /dev/shm is left alone: the
    sandbox replaces those with empty tmpfs, so it is gone from sight already (and no longer exists there to be
    covered)."""
    folders = {str(PROJECT), str(PROJECT.parent), os.path.realpath(os.path.expanduser("~"))}
    if os.getuid() == 0:  # the code runs as nobody
        folders |= _closed_to_others(os.path.realpath(sys.base_prefix))
    folders = {folder for folder in folders if folder not in ("/", "") and os.path.isdir(folder)
               and not any(folder == place or folder.startswith(place + os.sep) for place in PRIVATE_TMP)}
    # One inside another is covered with it (and would no longer exist to be covered).
    return sorted(folder for folder in folders
                  if not any(folder.startswith(other + os.sep) for other in folders if other != folder))


def _kept_under(hidden: list[str]) -> list[str]:
    """The Python installation's folder where a hidden folder would cover it."""
    prefix = os.path.realpath(sys.base_prefix)
    return [prefix] if any(prefix == folder or prefix.startswith(folder + os.sep) for folder in hidden) else []


def _processes_of_this_user() -> int:
    """Threads (RLIMIT_NPROC counts them) of this process's user, from /proc."""
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(entry / "task"))
            except OSError:
                continue
    return count


def _command() -> list[str]:
    if shutil.which("unshare") is None:
        raise SandboxUnavailable("util-linux `unshare` is not installed; code rewards need it (apt-get install "
                                 "util-linux)")
    user = [] if os.getuid() == 0 else ["--map-root-user"]
    return ["unshare", *user, "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
            _python(), "-I", str(INIT)]


def run_python(program: str, limits: SandboxLimits = SandboxLimits(),
               environment: dict[str, str] | None = None) -> SandboxRun:
    """Runs the Python source `program` as main.py in a fresh sandbox (see the module docstring) and returns
    what it printed, up to `limits.output_bytes`, with how it ended. `environment`: extra variables for it.
    Raises SandboxUnavailable when the namespaces cannot be made."""
    hidden = _hidden_folders()
    root = os.getuid() == 0
    spec = {"program": program, "hide": hidden, "keep": _kept_under(hidden), "python": _python(),
            "tmp_bytes": limits.file_bytes, "drop_to_nobody": root, "environment": environment or {},
            "nproc": limits.max_processes if root else _processes_of_this_user() + limits.max_processes,
            "limits": {"cpu_s": limits.cpu_s, "memory_bytes": limits.memory_bytes, "file_bytes": limits.file_bytes}}
    start = time.monotonic()
    process = subprocess.Popen(_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    process.stdin.write(json.dumps(spec).encode())
    process.stdin.close()
    output = {process.stdout: bytearray(), process.stderr: bytearray()}
    timed_out = overflowed = False
    with selectors.DefaultSelector() as selector:
        for stream in output:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = limits.wall_s - (time.monotonic() - start)
            if left <= 0:
                timed_out = True
                break
            for key, _ in selector.select(timeout=left):
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                output[key.fileobj] += chunk
                if sum(len(data) for data in output.values()) > limits.output_bytes:
                    overflowed = True
            if overflowed:
                break
    if timed_out or overflowed:
        os.killpg(process.pid, signal.SIGKILL)  # unshare, and with it (--kill-child) the whole namespace
    exit_code = process.wait()
    for stream in output:
        stream.close()
    stderr = bytes(output[process.stderr])
    if exit_code != 0 and b"unshare:" in stderr[:200] and not (timed_out or overflowed):
        raise SandboxUnavailable(f"cannot make the sandbox's namespaces: {stderr.decode(errors='replace').strip()}"
                                 f" (code rewards need unprivileged user namespaces, or root)")
    return SandboxRun(exit_code=-1 if timed_out or overflowed else exit_code,
                      stdout=bytes(output[process.stdout])[:limits.output_bytes].decode(errors="replace"),
                      stderr=stderr[:limits.output_bytes].decode(errors="replace"), timed_out=timed_out,
                      overflowed=overflowed, wall_s=time.monotonic() - start)
