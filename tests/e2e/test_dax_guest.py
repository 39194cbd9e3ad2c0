"""DAX in a real guest: QEMU 11.1's vhost-user-test-device exposes our cache window (from
GET_SHMEM_CONFIG) to a Linux guest that mounts the share with ``-o dax=inode``; the guest's
mmap of a file is our window, coherent with the host page cache and with other guests.

The share is a tmpfs mounted ``huge=always`` (st_blksize 2 MiB on the host): on a 6.1 guest
that is what makes msync/fsync of a DAX mapping fail when a back-end passes the host's
blksize through; ours reports the guest page size, so they succeed.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from guest_harness import parse_lines
from pyvirtiofsd import guest

pytestmark = pytest.mark.e2e
HERE = Path(__file__).resolve().parent
SCRIPT = guest.guest_path(HERE / "dax_guest.py")
GUEST_PYTHON = "/usr/bin/python3"  # the host's Debian python3, run by the guest through 9p
MiB = 1 << 20


@pytest.fixture
def huge_share(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=always,size=64M", "tmpfs", str(share)], check=True)
    try:
        yield share
    finally:
        subprocess.run(["umount", "-l", str(share)], check=False)


def start_backend(share: Path, workdir: Path, name: str) -> guest.Backend:
    socket = workdir / f"{name}.sock"
    argv = guest.backend_command("ours", socket, share, "share") + ["--cache-size", "1G"]
    return guest.Backend(argv, socket, workdir / f"{name}.log").start()


def wait_for(g: guest.Guest, marker: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while marker not in g.console:
        if g._proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"guest never printed {marker!r}:\n{g.console[-3000:]}")
        time.sleep(0.05)


def results(console: str) -> dict[str, dict]:
    return {r["step"]: r for r in parse_lines(console).get("PVFS-DAX", [])}


@pytest.mark.parametrize("flavor", ["bookworm", "sid"])
def test_dax_mmap_coherence_in_a_real_guest(huge_share, tmp_path, flavor):
    (huge_share / "aligned.bin").write_bytes(b"A" * (2 * MiB))
    (huge_share / "odd.txt").write_bytes(b"o" * 5000)
    assert os.stat(huge_share / "aligned.bin").st_blksize == 2 * MiB
    backend = start_backend(huge_share, tmp_path, "vfs")
    g = guest.Guest(f"{GUEST_PYTHON} {SCRIPT} /mnt single", backend.socket, frontend="qemu111",
                    flavor=flavor, mount_options="dax=inode", console_path=tmp_path / "console.log")
    try:
        g.start()
        wait_for(g, '"what": "host-write"')
        fd = os.open(huge_share / "aligned.bin", os.O_WRONLY)
        os.pwrite(fd, b"HOST-WRITE-00001", 4096)
        os.close(fd)
        result = g.wait(timeout=300)
    finally:
        g.kill()
        backend.stop()
    r = results(result.console)
    assert "done" in r and result.exit_status == 0, result.console[-3000:]
    assert r["statx"]["dax"] is True            # the guest really maps aligned.bin with DAX
    # the mapping's first bytes are the file's (read through the window before any write)
    assert r["first-bytes"]["data"] == "A" * 16, r["first-bytes"]
    assert r["statx"]["odd_dax"] is False        # a partial last page stays in the page cache
    assert r["statx"]["blksize"] == 4096         # not the host's 2 MiB
    assert r["host-write-seen"]["ok"], r        # a host write shows in the guest mmap at once
    for step in ("msync", "fsync", "fdatasync"):
        assert r[step]["ok"], r[step]            # EIO on 6.1 when blksize != PAGE_SIZE
    assert (huge_share / "aligned.bin").read_bytes()[8192:8192 + 16] == b"GUEST-STORE-0001"
    assert r["odd-read"]["size"] == 5000
    assert "[error" not in backend.log, backend.log[-3000:]


def test_two_guests_see_each_others_stores(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "peer.bin").write_bytes(bytes(2 * MiB))
    a = start_backend(share, tmp_path, "a")
    b = start_backend(share, tmp_path, "b")
    guests = [guest.Guest(f"{GUEST_PYTHON} {SCRIPT} /mnt peer {role}", be.socket, frontend="qemu111",
                          flavor="sid", mount_options="dax=inode", smp=1,
                          console_path=tmp_path / f"console-{role}.log")
              for role, be in (("A", a), ("B", b))]
    try:
        for g in guests:
            g.start()
        outs = [g.wait(timeout=400) for g in guests]
    finally:
        for g in guests:
            g.kill()
        a.stop()
        b.stop()
    for out in outs:
        r = results(out.console)
        # each guest's script ran to its end (peer-seen, msync, done) and exited cleanly
        assert "done" in r and out.exit_status == 0, out.console[-2000:]
        assert r["statx"]["dax"] is True, out.console[-2000:]
        assert r["peer-seen"]["ok"], out.console[-2000:]
        assert r["msync"]["ok"]
    data = (share / "peer.bin").read_bytes()
    assert data[:12] == b"FROM-GUEST-A" and data[4096:4108] == b"FROM-GUEST-B"
