"""End-to-end: a real guest kernel uses the virtio-fs share; results checked in the guest and on the host.

Run with ``pytest -m e2e tests/e2e`` (see conftest.py for the environment switches).
"""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

pytestmark = pytest.mark.e2e

GUEST_PAGE_SIZE = 4096


def check_result(run, name: str) -> dict:
    """The named check's result; a check that printed nothing is a failure, never a skip."""
    results = run.checks()
    assert name in results, f"guest printed no result for {name!r} ({run.describe()})"
    return results[name]


def passed_info(run, name: str) -> dict:
    result = check_result(run, name)
    assert result["ok"], f"{name} failed in the guest: {result['detail']}"
    return result["info"]


def test_guest_check(checks_run, check):
    result = check_result(checks_run, check)
    assert result["ok"], f"{check}: {result['detail']} {result['info']}"


def test_all_checks_ran(checks_run):
    """guest_checks.py ran to its end and exited with the status its results imply."""
    done = [l for l in checks_run.result.console.splitlines() if l.startswith("PVFS-CHECKS-DONE")]
    assert done, f"guest_checks.py did not finish ({checks_run.describe()})"
    failed = [n for n, r in checks_run.checks().items() if not r["ok"]]
    assert checks_run.result.exit_status == (1 if failed else 0)
    assert len(done) == 1 and done[0].split()[1:2] == [str(len(checks_run.checks()) - len(failed))]


def test_the_front_end_is_offered_nothing_it_cannot_take(checks_run, frontend):
    """QEMU 7.2's vhost-user-fs-pci has its own tag and reads no config space: a back-end
    that offered PROTOCOL_F_CONFIG anyway made it print a warning on every boot."""
    console = checks_run.result.console
    assert "QEMU does not" not in console, [l for l in console.splitlines() if "QEMU does" in l]
    assert ("--tag" in " ".join(checks_run.backend_argv)) == (frontend == "qemu111")


def test_guest_files_on_host(checks_run):
    """Every file a check wrote is on the host with exactly the content the guest wrote."""
    expected = {}
    for result in checks_run.checks().values():
        expected.update(result["info"].get("host_files", {}))
    assert "pvfs-checks/write_read/big.bin" in expected, "write_read reported no files"
    wrong = {}
    for rel, digest in expected.items():
        path = checks_run.share / rel
        got = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
        if got != digest:
            wrong[rel] = got
    assert not wrong, f"host content differs from what the guest wrote: {wrong}"


def test_host_created_file_seen_by_guest(checks_run):
    info = passed_info(checks_run, "host_file_visible")
    assert info["sha256"] == hashlib.sha256(checks_run.host_file).hexdigest()


def test_nonroot_owner_on_host(checks_run):
    """A file uid 1000 created in the guest belongs to uid 1000 on the host, same inode."""
    info = passed_info(checks_run, "nonroot_owner")
    st = os.stat(checks_run.share / info["path"])
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert st.st_ino == info["ino"], "the guest saw another inode number than the host has"
    assert os.stat(checks_run.share / info["dir"]).st_uid == 1000


def test_chown_chmod_utimes_on_host(checks_run):
    chown = passed_info(checks_run, "chown")
    st = os.stat(checks_run.share / chown["path"])
    assert (st.st_uid, st.st_gid) == (chown["uid"], chown["gid"])
    chmod = passed_info(checks_run, "chmod")
    assert stat.S_IMODE(os.stat(checks_run.share / chmod["path"]).st_mode) == chmod["mode"]
    utimes = passed_info(checks_run, "utimes")
    assert os.stat(checks_run.share / utimes["path"]).st_mtime == utimes["mtime"]


def test_special_and_large_files_on_host(checks_run):
    fifo = passed_info(checks_run, "mknod_fifo")
    assert stat.S_ISFIFO(os.lstat(checks_run.share / fifo["path"]).st_mode)
    large = passed_info(checks_run, "large_file")
    assert os.stat(checks_run.share / large["path"]).st_size == large["size"]
    many = passed_info(checks_run, "readdir_10000")
    assert len(os.listdir(checks_run.share / many["dir"])) == many["count"]


def test_xattr_on_host(checks_run):
    info = passed_info(checks_run, "xattr")
    for name, value in info["xattr"].items():
        assert os.getxattr(checks_run.share / info["path"], name) == value.encode()


def test_blksize_is_guest_page_size(checks_run):
    info = check_result(checks_run, "blksize")["info"]
    assert (info.get("file"), info.get("dir")) == (GUEST_PAGE_SIZE, GUEST_PAGE_SIZE), info


def test_huge_tmpfs_blksize_is_guest_page_size(huge_tmpfs_run):
    """The host's huge=always tmpfs says 2 MiB; the guest must still see its page size (4 KiB).

    Both reference back-ends pass the 2 MiB through (the bug pyvirtiofsd fixes), so this fails
    with them; on a pre-6.17 guest kernel that blksize becomes i_blkbits and breaks DAX writeback.
    """
    seen = {entry["path"]: entry["blksize"] for entry in huge_tmpfs_run.lines.get("PVFS-BLKSIZE", [])}
    expected = {".", "small.txt", "big.bin", "dir", "dir/sub", "dir/sub/nested.txt"}
    assert expected <= set(seen), f"guest listed {sorted(seen)} ({huge_tmpfs_run.describe()})"
    wrong = {path: size for path, size in seen.items() if size != GUEST_PAGE_SIZE}
    assert not wrong, f"st_blksize seen by the guest is not {GUEST_PAGE_SIZE}: {wrong}"
