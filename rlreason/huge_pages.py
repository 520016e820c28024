"""Transparent huge pages for the host's large buffers, asked of glibc's malloc when the command line starts.

XLA's CPU runtime allocates each execution's temporaries as one buffer per device (280 MB a device for the peers'
GRPO step, configs/bench_peers.yaml) and frees it when the execution ends. glibc's malloc serves a buffer that
large with a fresh mmap and returns it with munmap, so every step faults in each 4 KiB page of it anew (137,000
page faults and 0.25 s of kernel time a step there). glibc's `glibc.malloc.hugetlb=1` tunable (glibc 2.35 and
later) makes malloc ask the kernel for transparent huge pages on such memory, which the kernel gives where its
THP mode is `madvise`, as most distributions set it: then 1,200-1,700 faults a step, and the step 8-37% faster
in most measurements (docs/benchmarks.md). glibc reads its tunables once, when a process starts, so `rlreason`
re-runs itself with the tunable added (`rerun_with_huge_pages`) before it imports anything heavy. A
GLIBC_TUNABLES that names `glibc.malloc.hugetlb` already, `=0` included, is left as it is.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
FIRST_GLIBC_WITH_TUNABLE = (2, 35)
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(mode_file: Path = THP_MODE_FILE) -> str:
    """The kernel's transparent-huge-page mode, the bracketed word of `mode_file` ("always [madvise] never" ->
    "madvise"); "" where the kernel has no such file (not Linux, or THP compiled out)."""
    try:
        words = mode_file.read_text().split()
    except OSError:
        return ""
    return next((word.strip("[]") for word in words if word.startswith("[")), "")


def _tunables(environ: Mapping[str, str]) -> dict[str, str]:
    """GLIBC_TUNABLES ("name=value:name=value") as a dict."""
    pairs = (item.split("=", 1) for item in environ.get("GLIBC_TUNABLES", "").split(":") if "=" in item)
    return dict(pairs)


def huge_pages_environment(environ: Mapping[str, str], libc: tuple[str, str], mode: str) -> dict[str, str] | None:
    """`environ` with glibc.malloc.hugetlb=1 added to GLIBC_TUNABLES, or None where re-running in it would change
    nothing: the tunable is set already (whatever its value), `libc` (platform.libc_ver()) is not glibc 2.35 or
    later, or the THP `mode` (thp_mode()) is not "madvise" ("always" gives huge pages without asking, "never"
    refuses them)."""
    name, version = libc
    try:
        glibc_version = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None
    if name != "glibc" or glibc_version < FIRST_GLIBC_WITH_TUNABLE or mode != "madvise":
        return None
    if TUNABLE in _tunables(environ):
        return None
    tunables = ":".join(item for item in (environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1") if item)
    return {**environ, "GLIBC_TUNABLES": tunables}


def huge_pages_on(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process's large malloc'd buffers get transparent huge pages: the kernel gives them to every
    large mapping (mode "always"), or to those malloc asks for (mode "madvise" with glibc.malloc.hugetlb >= 1)."""
    mode = thp_mode()
    return mode == "always" or (mode == "madvise" and _tunables(environ).get(TUNABLE, "0") not in ("", "0"))


def rerun_with_huge_pages() -> None:
    """Replaces this process by the same command line (interpreter options included) in huge_pages_environment,
    where that changes anything; returns otherwise. Call it first thing in a program's entry point: nothing
    after it runs in the replaced process."""
    environment = huge_pages_environment(os.environ, platform.libc_ver(), thp_mode())
    if environment is not None and sys.executable:  # an embedding interpreter may not know its own program
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
