"""What this machine's kernel and C library say about huge pages, read directly (not through rlreason.huge_pages,
which they check); shared by the huge-page and CLI tests."""

import platform
from pathlib import Path


def machine_thp_mode_line() -> str:
    """The kernel's THP mode line as it reads, e.g. "always [madvise] never"; "" without one."""
    mode_file = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return mode_file.read_text() if mode_file.exists() else ""


def machine_gives_huge_pages_on_request() -> bool:
    """glibc 2.35+ (which has the tunable) and a kernel in THP mode madvise, told from the machine directly."""
    name, version = platform.libc_ver()
    return (name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 35)
            and "[madvise]" in machine_thp_mode_line())
