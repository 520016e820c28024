"""The first process inside a sandbox (see `rlreason.verifiers.sandbox`): run as root of fresh mount, PID and
network namespaces by `unshare`, with the sandbox's spec as JSON on stdin.

It makes the file system the code will see, then forks the code's process with its limits and user, and
stays as the namespace's init: it reaps whatever the code leaves behind, and when the code's process ends it
exits with that process's status (128 + signal when killed), which ends the namespace and kills every
process still in it. Standard library only: it runs under `python -I` before anything else is imported.
"""

import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
NOBODY = 65534
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")

libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                  data.encode() if data else None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def make_file_system(spec: dict) -> str:
    """Private size-capped /tmp, /var/tmp, /dev/shm; `hide` behind empty read-only tmpfs, `keep` (paths under
    them the code needs: the Python installation) bound back read-only. Returns the code's working folder."""
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmp_bytes']},mode=1777")
    staged = []
    for index, keep in enumerate(spec["keep"]):  # bound aside before what holds them is covered
        stage = f"/tmp/.keep{index}"
        os.mkdir(stage)
        mount(keep, stage, None, MS_BIND | MS_REC)
        staged.append((stage, keep))
    for hidden in spec["hide"]:
        mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for stage, keep in staged:
        os.makedirs(keep, mode=0o755, exist_ok=True)
        mount(stage, keep, None, MS_BIND | MS_REC)
        mount("none", keep, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
        libc.umount2(stage.encode(), MNT_DETACH)
        os.rmdir(stage)
    for hidden in spec["hide"]:
        mount("tmpfs", hidden, "tmpfs", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for place in PRIVATE_TMP[1:]:
        if os.path.isdir(place):
            mount("tmpfs", place, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmp_bytes']},mode=1777")
    work = "/tmp/work"
    os.mkdir(work, 0o777)
    with open(os.path.join(work, "main.py"), "w") as program:
        program.write(spec["program"])
    if os.getuid() == 0 and spec["drop_to_nobody"]:
        os.chown(work, NOBODY, NOBODY)
    return work


def run_code(spec: dict, work: str) -> None:
    """In the forked child: limits, the code's user, then exec the program. Does not return."""
    limits = spec["limits"]
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.getuid() == 0 and spec["drop_to_nobody"]:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    os.chdir(work)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    environment = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", **spec["environment"]}
    os.execve(spec["python"], [spec["python"], "-I", "main.py"], environment)


def main() -> int:
    spec = json.loads(sys.stdin.read())
    work = make_file_system(spec)
    code = os.fork()
    if code == 0:
        try:
            run_code(spec, work)
        except OSError as error:  # the Python installation out of the code user's reach, a limit refused
            os.write(2, f"sandbox: cannot start {spec['python']}: {error}\n".encode())
        finally:
            os._exit(127)
    while True:  # the namespace's init: reap everything until the code's own process has ended
        pid, status = os.wait()
        if pid == code:
            return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
