"""The broad guest workload (seccomp_workload.py: coreutils, tar, find, dd O_DIRECT, flock,
fallocate, attr and acl tools, mmap, syncs, rename exchange, O_TMPFILE...) against a daemon
with the default ``--seccomp kill``: every step must succeed and the daemon must end by
itself with status 0 -- a call off its allow-list would have killed it (SIGSYS, mirrored by
the supervisor, and an audit record in the kernel log).

The CI run is one configuration (``acl-writeback``: sid's 7.x guest on QEMU 11.1, the one
that sends FUSE_TMPFILE and FUSE_STATX, with POSIX ACLs, writeback cache, direct I/O and
killpriv v2).  ``PYVIRTIOFSD_WORKLOAD_CONFIGS`` picks others (comma list, or ``all``):
``scripts/gen-seccomp.py --workload`` runs them all with the daemon traced, to find system
calls the test suite never makes.
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from guest_harness import parse_lines
from pyvirtiofsd import guest

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "seccomp_workload.py"
GUEST_PYTHON = "/usr/bin/python3"   # the host's python3, run by the guest through 9p
TAG, MOUNT_POINT = "share", "/mnt"
FLAVOR = {"qemu72": "bookworm", "qemu111": "sid"}
TREE_FILES_PER_DIR = 50
# Directories in the tarball, 52 files each: 12 (624 files) in the CI run, which keeps it
# near a minute of TCG guest; scripts/gen-seccomp.py --workload sets
# PYVIRTIOFSD_WORKLOAD_DIRS=60 (3,120 files).
TREE_DIRS = int(os.environ.get("PYVIRTIOFSD_WORKLOAD_DIRS", "12"))

# name -> (front-end, guest mount options, daemon options beyond --socket-path,
# --shared-dir and --tag; "{tmp}" is the test's directory).  Each needs ACLs (the acl step).
CONFIGS = {
    "acl-writeback": ("qemu111", "", ["--posix-acl", "--writeback", "--allow-direct-io",
                                      "--killpriv-v2"]),
    "bookworm-always-handles": ("qemu72", "", ["--posix-acl", "--cache", "always",
                                               "--no-readdirplus", "--thread-pool-size", "0",
                                               "--inode-file-handles", "prefer"]),
    "never-mmap-chroot": ("qemu111", "", ["--posix-acl", "--cache", "never", "--allow-mmap",
                                          "--sandbox", "chroot", "--xattrmap",
                                          ":prefix:all:trusted.:user.virtiofs.trusted.:"
                                          ":ok:all:::"]),
    "dax-opslog": ("qemu111", "dax=inode", ["--posix-acl", "--cache-size", "256M",
                                            "--ops-log", "{tmp}/ops.log", "--stats",
                                            "--stats-interval", "5", "--log-level", "debug"]),
}
DEFAULT = ["acl-writeback"]


def chosen() -> list[str]:
    value = os.environ.get("PYVIRTIOFSD_WORKLOAD_CONFIGS", "")
    if not value:
        return DEFAULT
    if value == "all":
        return list(CONFIGS)
    names = value.split(",")
    unknown = set(names) - set(CONFIGS)
    if unknown:
        raise pytest.UsageError(f"PYVIRTIOFSD_WORKLOAD_CONFIGS: unknown {sorted(unknown)}; "
                                f"known: {sorted(CONFIGS)}")
    return names


def make_tree(path: Path) -> int:
    """A source-like tarball: directories of small C and header files, scripts with the
    executable bit, a few symlinks and hard links.  Returns how many regular files (names)
    it holds."""
    files = 0
    with tarfile.open(path, "w") as tar:
        def add(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, target=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, 1_700_000_000
            info.linkname = target
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("src", tarfile.DIRTYPE, mode=0o755)
        for d in range(TREE_DIRS):
            top = f"src/mod{d:02d}"
            add(top, tarfile.DIRTYPE, mode=0o755)
            add(f"{top}/include", tarfile.DIRTYPE, mode=0o755)
            for i in range(TREE_FILES_PER_DIR):
                body = (f"/* mod{d} file{i} */\n#include \"mod{d}.h\"\n"
                        + f"int f{i}(int x) {{ return x * {i} + {d}; }}\n" * (i % 7 + 1)).encode()
                sub = "include" if i % 5 == 0 else ""
                ext = ".h" if sub else ".c"
                add(f"{top}/{sub + '/' if sub else ''}file{i:03d}{ext}", data=body)
                files += 1
            add(f"{top}/build.sh", data=b"#!/bin/sh\nexec make -C \"$(dirname \"$0\")\"\n",
                mode=0o755)
            add(f"{top}/Makefile.link", tarfile.LNKTYPE, target=f"{top}/build.sh")
            add(f"{top}/current", tarfile.SYMTYPE, target="include")
            files += 2
    return files


def audit_records(pids: list[int]) -> list[str]:
    """Kernel-log seccomp records (audit type 1326) of these processes."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=20).stdout
    return [line for line in out.splitlines()
            if "type=1326" in line and any(f" pid={p} " in line for p in pids)]


@pytest.mark.parametrize("config", chosen())
def test_workload_under_seccomp_kill(tmp_path, config):
    frontend, mount_options, options = CONFIGS[config]
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    share = tmp_path / "share"
    share.mkdir()
    tarball = tmp_path / "tree.tar"
    files = make_tree(tarball)
    sock = tmp_path / "vhost-user.sock"
    argv = [*guest.backend_command("ours", sock, share, TAG), "--log-level", "info", *options]
    backend = guest.Backend(argv, sock, tmp_path / "backend.log").start()
    supervisor = backend.proc.pid
    with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
        daemon = [int(p) for p in f.read().split()]
    command = (f"cd / && {GUEST_PYTHON} {guest.guest_path(WORKLOAD)} {MOUNT_POINT} "
               f"{guest.guest_path(tarball)} {files}")
    g = guest.Guest(command, sock, tag=TAG, frontend=frontend, flavor=FLAVOR[frontend],
                    mount_point=MOUNT_POINT, mount_options=mount_options,
                    console_path=tmp_path / "console.log")
    died_first = False
    try:
        g.start()
        deadline = time.monotonic() + 600
        while g._proc.poll() is None and time.monotonic() < deadline:
            if backend.proc.poll() is not None:
                # A daemon killed mid-workload leaves the guest hanging; one that ended because
                # the guest powered off exits while QEMU is still tearing down: wait for that.
                try:
                    g._proc.wait(15)
                except subprocess.TimeoutExpired:
                    died_first = True
                break
            time.sleep(0.2)
        if died_first or g._proc.poll() is None:
            g.kill()
        console = g.console
        result = None if died_first else g.wait(30)
        if backend.proc.poll() is None:    # the guest is gone: the daemon exits by itself
            backend.proc.wait(30)
    finally:
        g.kill()
        status = backend.stop()
    log = backend.log
    steps = parse_lines(console).get("PVFS-WORKLOAD", [])
    summary = {s["name"]: (s["ok"], s["detail"], s["seconds"]) for s in steps}
    print(f"\n[workload {config}] {files} files in the tree; steps: {summary}")

    assert not died_first and status == 0, (
        f"the daemon ended with status {status} during the workload "
        f"(-31: SIGSYS)\n{log[-3000:]}\n--- console ---\n{console[-3000:]}")
    assert "seccomp=kill" in log, log[-2000:]
    assert "was killed" not in log and "outside the seccomp allow-list" not in log, log[-3000:]
    assert not audit_records([supervisor, *daemon])
    failed = {s["name"]: s["detail"] for s in steps if not s["ok"]}
    assert not failed, failed
    assert re.search(r"^PVFS-WORKLOAD-DONE (\d+) \1$", console, re.M), console[-3000:]
    assert len(steps) >= 14, sorted(summary)
    assert result is not None and result.exit_status == 0, console[-3000:]
    # What the guest left is on the host: the inherited ACL as its xattr, the tree gone.
    assert os.getxattr(share / "workload" / "acl" / "inherits", "system.posix_acl_access")
    assert not (share / "workload" / "tree").exists()
