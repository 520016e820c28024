"""rlreason.huge_pages: the command line re-runs itself with glibc.malloc.hugetlb=1 where the machine gives
transparent huge pages on request, and the re-run process's large buffers then fault in whole huge pages."""

import os
import subprocess
import sys
import textwrap

import pytest
from host_pages import machine_gives_huge_pages_on_request

from rlreason import cli, huge_pages
from rlreason.huge_pages import huge_pages_environment, thp_mode

GLIBC = ("glibc", "2.36")


def test_thp_mode_is_the_bracketed_word(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert thp_mode(mode_file) == "madvise"
    mode_file.write_text("[always] madvise never\n")
    assert thp_mode(mode_file) == "always"
    assert thp_mode(tmp_path / "missing") == ""


def test_the_tunable_is_added_to_the_environment_and_to_tunables_already_there():
    environ = {"PATH": "/bin", "HOME": "/root"}
    assert huge_pages_environment(environ, GLIBC, "madvise") == {**environ, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    environ["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=2"
    assert huge_pages_environment(environ, GLIBC, "madvise")["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


@pytest.mark.parametrize(("environ", "libc", "mode"), [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise"),  # the user's choice stands
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}, GLIBC, "madvise"),  # set already
    ({}, ("glibc", "2.34"), "madvise"),  # before the tunable existed
    ({}, ("", ""), "madvise"),  # not glibc (musl, macOS)
    ({}, GLIBC, "always"),  # huge pages without asking
    ({}, GLIBC, "never"),  # refused whatever malloc asks
    ({}, GLIBC, ""),  # no THP in this kernel
])
def test_no_rerun_where_it_would_change_nothing(environ, libc, mode):
    assert huge_pages_environment(environ, libc, mode) is None


@pytest.mark.parametrize(("mode", "tunables", "expected"), [
    ("madvise", "glibc.malloc.hugetlb=1", True), ("madvise", "glibc.malloc.hugetlb=0", False),
    ("madvise", "", False), ("always", "", True), ("never", "glibc.malloc.hugetlb=1", False)])
def test_huge_pages_on_reads_the_mode_and_the_tunable(monkeypatch, mode, tunables, expected):
    monkeypatch.setattr(huge_pages, "thp_mode", lambda: mode)
    assert huge_pages.huge_pages_on({"GLIBC_TUNABLES": tunables}) is expected


def test_only_the_process_entry_point_reruns(monkeypatch):
    """main() as the entry point re-runs first; main(argv), called from Python (tests, pipelines), never does:
    it would replace the caller's process."""
    calls = []
    monkeypatch.setattr(cli, "rerun_with_huge_pages", lambda: calls.append("rerun"))
    monkeypatch.setattr(sys, "argv", ["rlreason", "train", "configs/missing.yaml"])
    assert cli.main() == 2 and calls == ["rerun"]
    assert cli.main(["train", "configs/missing.yaml"]) == 2 and calls == ["rerun"]


@pytest.mark.skipif(not machine_gives_huge_pages_on_request(), reason="needs glibc >= 2.35 and THP mode madvise")
def test_the_rerun_process_faults_its_large_buffers_in_huge_pages():
    """A process started without the tunable re-runs itself with it, and a 64 MiB malloc'd buffer written there
    takes a few hundred page faults (about one per 2 MiB huge page, and small pages at its unaligned ends) where
    4 KiB pages take 16,384: the tunable reaches glibc, not just the environment. The bound leaves room for
    fragmented memory that gets some small pages."""
    # glibc's malloc itself, through ctypes: numpy asks for huge pages on its own (madvise), whatever the tunable.
    program = textwrap.dedent("""
        import ctypes, os, resource
        from rlreason.huge_pages import rerun_with_huge_pages
        rerun_with_huge_pages()
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(libc.malloc(64 * 2**20), 1, 64 * 2**20)  # an mmap this large, every page written
        print(os.environ.get("GLIBC_TUNABLES"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    environ = {name: value for name, value in os.environ.items() if name != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environ, timeout=60)
    assert result.returncode == 0, result.stderr
    tunables, faults = result.stdout.split()
    assert tunables == "glibc.malloc.hugetlb=1"
    assert int(faults) < 16384 // 4
