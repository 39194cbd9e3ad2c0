"""End-to-end: the example file systems (examples/memfs.py, examples/archivefs.py -- pure
Python FileSystem subclasses served with pyvirtiofsd.serve) mounted by a real QEMU 7.2
guest, both in one boot through qemu-configs/run-guest.sh plus a second vhost-user-fs
device; custom_fs_checks.py runs in the guest and reports each check."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from guest_harness import parse_lines
from pyvirtiofsd import guest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
RUN_GUEST = REPO / "qemu-configs" / "run-guest.sh"
CHECKS = Path(__file__).resolve().parent / "custom_fs_checks.py"
HOSTROOT = "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
CHECK_NAMES = ["memfs_write_read", "memfs_tree", "memfs_attributes",
               "memfs_open_unlinked_file_stays_readable", "archive_contents",
               "archive_writes_are_erofs"]


def make_archive(path: Path) -> dict:
    """A tar.xz with nested directories, a 1 MiB binary, a symlink and a hard link; returns
    the manifest the guest checks against."""
    members = {
        "README": b"served from a tar.xz by examples/archivefs.py\n",
        "src/main.c": b"int main(void) { return 0; }\n" * 40,
        "src/lib/util.h": b"#pragma once\n",
        "data/blob.bin": bytes(range(256)) * 4096,
    }
    with tarfile.open(path, "w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("latest")
        link.type, link.linkname = tarfile.SYMTYPE, "src/main.c"
        tar.addfile(link)
        hard = tarfile.TarInfo("README.copy")
        hard.type, hard.linkname = tarfile.LNKTYPE, "README"
        tar.addfile(hard)
    files = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}
    files["README.copy"] = files["README"]
    return {"files": files, "symlinks": {"latest": "src/main.c"}}


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("custom-fs")
    manifest = make_archive(work / "project.tar.xz")
    (work / "manifest.json").write_text(json.dumps(manifest))
    mem_sock, arch_sock = work / "memfs.sock", work / "archive.sock"
    ops_log = work / "memfs-ops.jsonl"
    memfs = guest.Backend([sys.executable, str(EXAMPLES / "memfs.py"), "--socket-path",
                           str(mem_sock), "--ops-log", str(ops_log)], mem_sock, work / "memfs.log")
    archive = guest.Backend([sys.executable, str(EXAMPLES / "archivefs.py"),
                             str(work / "project.tar.xz"), "--socket-path", str(arch_sock)],
                            arch_sock, work / "archive.log")
    assets = guest.prepare("bookworm")
    command = ("mkdir -p /tmp/archive && mount -t virtiofs archive /tmp/archive && "
               f"/usr/bin/python3 {guest.guest_path(CHECKS)} /mnt /tmp/archive "
               f"{guest.guest_path(work / 'manifest.json')}")
    argv = [str(RUN_GUEST), "-s", str(mem_sock), "-t", "memfs", "-k", str(assets.boot_image),
            "-i", str(assets.initrd), "-a", guest.kernel_cmdline(command, "memfs", "/mnt", ""),
            "--", "-virtfs", HOSTROOT,
            "-chardev", f"socket,id=char1,path={arch_sock}",
            "-device", "vhost-user-fs-pci,chardev=char1,tag=archive,queue-size=128"]
    t0 = time.monotonic()
    with memfs, archive:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
        statuses = (memfs.proc.wait(timeout=30), archive.proc.wait(timeout=30))
    console = (r.stdout + r.stderr).decode(errors="replace").replace("\r", "")
    (work / "console.log").write_text(console)
    print(f"\n[e2e] memfs + archivefs guest: {time.monotonic() - t0:.1f} s; console in "
          f"{work / 'console.log'}")
    results = {d["name"]: d for d in parse_lines(console).get("PVFS-CUSTOM", [])}
    return {"console": console, "results": results, "statuses": statuses,
            "ops_log": ops_log, "memfs_log": memfs.log, "archive_log": archive.log}


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_guest_check(custom_run, name):
    results = custom_run["results"]
    assert name in results, ("the guest reported nothing for " + name + "\n"
                             + "\n".join(custom_run["console"].splitlines()[-30:]))
    assert results[name]["ok"], f"{results[name]['detail']} {results[name]['info']}"


def test_every_check_ran_and_both_daemons_exited_cleanly(custom_run):
    assert f"PVFS-CUSTOM-DONE {len(CHECK_NAMES)} {len(CHECK_NAMES)}" in custom_run["console"]
    assert custom_run["statuses"] == (0, 0), (custom_run["memfs_log"][-2000:],
                                              custom_run["archive_log"][-2000:])


def test_memfs_ops_log_saw_the_guests_writes(custom_run):
    records = [json.loads(line) for line in custom_run["ops_log"].read_text().splitlines()]
    ops = {r["opcode"] for r in records}
    assert {"INIT", "LOOKUP", "CREATE", "WRITE", "READ", "MKDIR", "UNLINK", "RENAME"} <= ops
    written = sum(r["bytes"] for r in records if r["opcode"] == "WRITE")
    wanted = custom_run["results"]["memfs_write_read"]["info"]["bytes_written"]
    assert written >= wanted, (written, wanted)
    assert all(r["errno"] == 0 for r in records if r["opcode"] == "WRITE")
