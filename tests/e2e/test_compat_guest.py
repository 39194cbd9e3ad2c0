"""End-to-end: virtiofsd's options in one real QEMU 7.2 guest (Debian 12 kernel), two
daemons, two virtio-fs devices; tests/e2e/compat_checks.py runs in the guest while the host
samples both daemons' open fds.

The guest runs SELinux without a policy, so it labels every new file "unlabeled".
Daemon A (/mnt): --posix-acl=auto --killpriv-v2 --announce-submounts (a tmpfs is mounted
inside its share) --inode-file-handles=prefer --allow-direct-io --preserve-noatime
--writeback --rlimit-nofile=2048, C hot path on.  Daemon B (/tmp/b): --xattrmap=:map::user.virtiofs.:,
--security-label=auto, --translate-uid/--translate-gid, --cache=metadata,
--inode-file-handles=never and an ops log.  Both sandboxed
(namespace, seccomp kill) as by default.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from guest_harness import parse_lines
from pyvirtiofsd import guest

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHECKS = HERE / "compat_checks.py"
RUN_GUEST = REPO / "qemu-configs" / "run-guest.sh"
HOSTROOT = "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
PROBES = ("direct.bin", "noatime.bin", "wronly.bin")
MANY = 1500
CHECK_NAMES = ["acl_enforced", "acl_default_and_umask", "killpriv_write_clears_setuid",
               "supplementary_group_create",
               "submount_has_its_own_st_dev", "security_xattr_needs_the_map",
               "security_label_on_create", "translated_owners", "cache_metadata_is_direct_io",
               "open_flags_reach_the_host", "many_files_looked_up"]

A_OPTIONS = ["--xattr", "--posix-acl=auto", "--killpriv-v2", "--announce-submounts",
             "--inode-file-handles=prefer", "--allow-direct-io", "--preserve-noatime",
             "--writeback", "--rlimit-nofile=2048"]   # at most 2048 / 8 idle inode fds
B_OPTIONS = ["--xattrmap=:map::user.virtiofs.:", "--security-label=auto",
             "--translate-uid=map:1000:101000:1", "--translate-gid=map:1000:101000:1",
             "--translate-uid=squash-guest:2000:4000:10", "--translate-uid=forbid-guest:3000:1",
             "--cache=metadata", "--inode-file-handles=never"]


def descendants(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


class FdSampler(threading.Thread):
    """Every 0.2 s: each daemon's open-fd count (max kept) and the open flags of its fds on
    the probe files (by inode: the sandboxed daemon's paths differ from ours)."""

    def __init__(self, daemons: dict[str, guest.Backend], probes: dict[tuple[int, int], tuple[str, str]]):
        super().__init__(daemon=True)
        self.daemons, self.probes = daemons, probes
        self.max_fds = {name: 0 for name in daemons}
        self.flags: dict[tuple[str, str], set[int]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for name, backend in self.daemons.items():
                try:
                    self.sample(name, backend.proc.pid)
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    pass

    def sample(self, name: str, root: int) -> None:
        for pid in descendants(root):
            fds = os.listdir(f"/proc/{pid}/fd")
            self.max_fds[name] = max(self.max_fds[name], len(fds))
            for fd in fds:
                try:
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    probe = self.probes.get((st.st_dev, st.st_ino))
                    if probe is None:
                        continue
                    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                        flags = int(next(l for l in f if l.startswith("flags:")).split()[1], 8)
                except (FileNotFoundError, ProcessLookupError, StopIteration):
                    continue
                if not flags & os.O_PATH:
                    self.flags.setdefault(probe, set()).add(flags)


@pytest.fixture(scope="module", params=["bookworm", "sid"])
def compat_run(request, tmp_path_factory):
    """One guest per kernel: Debian 12's 6.1 (FUSE 7.38 as Debian ships it) and sid's
    (newer: request extensions with supplementary groups)."""
    flavor = request.param
    work = tmp_path_factory.mktemp(f"compat-{flavor}")
    share_a, share_b = work / "a", work / "b"
    probes = {}
    for share, label in ((share_a, "A"), (share_b, "B")):
        share.mkdir()
        os.chmod(share, 0o777)
        for name in PROBES:
            (share / name).write_bytes(b"\0" * 8192)
            os.chmod(share / name, 0o666)
            st = os.stat(share / name)
            probes[(st.st_dev, st.st_ino)] = (label, name)
    (share_a / "sub").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(share_a / "sub")],
                   check=True)
    (share_a / "sub" / "on-the-tmpfs").write_text("tmpfs\n")
    hx = share_b / "hostonly-xattr"
    hx.write_bytes(b"")
    os.setxattr(hx, "user.hostonly", b"h")
    os.setxattr(hx, "user.virtiofs.trusted.mapped", b"m")

    ops_log = work / "b-ops.jsonl"
    sock_a, sock_b = work / "a.sock", work / "b.sock"
    base = [sys.executable, "-m", "pyvirtiofsd", "--log-level", "debug"]
    a = guest.Backend(base + ["--socket-path", str(sock_a), "--shared-dir", str(share_a),
                              "--tag", "share", *A_OPTIONS], sock_a, work / "a.log")
    b = guest.Backend(base + ["--socket-path", str(sock_b), "--shared-dir", str(share_b),
                              "--tag", "compat", "--ops-log", str(ops_log), *B_OPTIONS],
                      sock_b, work / "b.log")
    assets = guest.prepare(flavor)
    command = ("mkdir -p /tmp/b && mount -t virtiofs compat /tmp/b && "
               f"/usr/bin/python3 {guest.guest_path(CHECKS)} /mnt /tmp/b")
    argv = [str(RUN_GUEST), "-s", str(sock_a), "-t", "share", "-k", str(assets.boot_image),
            "-i", str(assets.initrd),
            # SELinux on (no policy): the guest sends a security context with every create
            "-a", guest.kernel_cmdline(command, "share", "/mnt", "") + " security=selinux selinux=1",
            "--", "-virtfs", HOSTROOT,
            "-chardev", f"socket,id=char1,path={sock_b}",
            "-device", "vhost-user-fs-pci,chardev=char1,tag=compat,queue-size=128"]
    t0 = time.monotonic()
    try:
        with a, b:
            sampler = FdSampler({"A": a, "B": b}, probes)
            sampler.start()
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=900)
            sampler.stop.set()
            sampler.join()
    finally:
        subprocess.run(["umount", "-l", str(share_a / "sub")], check=False)
    console = (r.stdout + r.stderr).decode(errors="replace").replace("\r", "")
    (work / "console.log").write_text(console)
    print(f"\n[e2e] compat guest ({flavor}): {time.monotonic() - t0:.1f} s; console in {work / 'console.log'}"
          f"; daemon fds at most {sampler.max_fds}")
    results = {d["name"]: d for d in parse_lines(console).get("PVFS-COMPAT", [])}
    return {"console": console, "results": results, "a": share_a, "b": share_b, "flavor": flavor,
            "sampler": sampler, "ops_log": ops_log, "a_log": a.log, "b_log": b.log}


def info(run, name: str) -> dict:
    res = run["results"]
    assert name in res, ("the guest reported nothing for " + name + "\n"
                         + "\n".join(run["console"].splitlines()[-30:]) + "\n" + run["a_log"][-1500:]
                         + run["b_log"][-1500:])
    assert res[name]["ok"], f"{name}: {res[name]['detail']}\n{res[name]['info'].get('trace', '')}"
    return res[name]["info"]


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_guest_check(compat_run, name):
    info(compat_run, name)


def test_every_check_ran(compat_run):
    assert f"PVFS-COMPAT-DONE {len(CHECK_NAMES)} {len(CHECK_NAMES)}" in compat_run["console"]


def test_acls_on_the_host(compat_run):
    a = compat_run["a"]
    acl = subprocess.run(["getfacl", "-n", str(a / info(compat_run, "acl_enforced")["path"])],
                         capture_output=True, text=True, check=True).stdout
    assert "user:1000:rw-" in acl
    got = info(compat_run, "acl_default_and_umask")
    child = subprocess.run(["getfacl", "-n", str(a / got["child"])], capture_output=True,
                           text=True, check=True).stdout
    assert "user:1000:rwx" in child
    assert stat.S_IMODE(os.stat(a / got["masked"]).st_mode) == 0o700


def test_setuid_cleared_on_the_host(compat_run):
    got = info(compat_run, "killpriv_write_clears_setuid")
    assert stat.S_IMODE(os.stat(compat_run["a"] / got["path"]).st_mode) == 0o777
    assert stat.S_IMODE(os.stat(compat_run["a"] / got["root_path"]).st_mode) == 0o4755


def test_submount_announced(compat_run):
    got = info(compat_run, "submount_has_its_own_st_dev")
    assert got["share_dev"] != got["sub_dev"]


def test_security_xattr_on_the_host(compat_run):
    got = info(compat_run, "security_xattr_needs_the_map")
    assert got["a_errno"] == "EPERM"          # no CAP_SYS_ADMIN in the sandboxed daemon
    path = compat_run["b"] / got["b_path"]
    assert os.getxattr(path, "user.virtiofs.security.pvfs") == b"label"
    assert "security.pvfs" not in os.listxattr(path)


def test_owners_translated_on_the_host(compat_run):
    d = compat_run["b"] / info(compat_run, "translated_owners")["dir"]
    st = os.stat(d / "by-1000")
    assert (st.st_uid, st.st_gid) == (101000, 101000)
    assert os.stat(d / "by-2005").st_uid == 4000
    assert not (d / "by-3000").exists()


def test_metadata_cached_for_the_whole_pause(compat_run):
    """Between the two STATFS markers the guest stat'ed the probe again after 2.5 s: with
    cache=metadata's day-long timeouts nothing reached the daemon (1 s under auto would)."""
    info(compat_run, "cache_metadata_is_direct_io")
    # in time order: lines of requests C served reach the file in batches (hotstats.py)
    records = sorted((json.loads(l) for l in compat_run["ops_log"].read_text().splitlines()),
                     key=lambda r: r["time"])
    marks = [i for i, r in enumerate(records) if r["opcode"] == "STATFS"]
    assert len(marks) >= 2, "no STATFS markers in the ops log"
    between = records[marks[-2] + 1:marks[-1]]
    assert not [r for r in between if r["opcode"] in ("LOOKUP", "GETATTR", "STATX")], between


def test_open_flags_seen_by_the_host(compat_run):
    info(compat_run, "open_flags_reach_the_host")
    flags = compat_run["sampler"].flags
    seen = {k: [oct(f) for f in v] for k, v in flags.items()}
    assert all(f & os.O_DIRECT for f in flags[("A", "direct.bin")]), seen
    assert all(f & os.O_NOATIME for f in flags[("A", "noatime.bin")]), seen
    assert all(f & os.O_ACCMODE == os.O_RDWR for f in flags[("A", "wronly.bin")]), seen  # writeback
    assert not any(f & os.O_DIRECT for f in flags[("B", "direct.bin")]), seen
    assert not any(f & os.O_NOATIME for f in flags[("B", "noatime.bin")]), seen
    assert all(f & os.O_ACCMODE == os.O_WRONLY for f in flags[("B", "wronly.bin")]), seen


def test_file_handles_keep_fds_down(compat_run):
    info(compat_run, "many_files_looked_up")
    fds = compat_run["sampler"].max_fds
    assert "inode file handles unusable" not in compat_run["a_log"]
    assert fds["B"] > MANY, fds
    assert fds["A"] < 2048 // 8 + 300, fds          # idle fds of the inodes used last + own


def test_security_label_stored_at_create(compat_run):
    """The label arrived with the create requests themselves: the host has it under the
    map's name, and the only SETXATTR the daemon ever saw is security_xattr's own one."""
    got = info(compat_run, "security_label_on_create")
    for rel in (got["file"], got["dir"]):
        value = os.getxattr(compat_run["b"] / rel, "user.virtiofs.security.selinux")
        assert value.rstrip(b"\0").decode() == got["label"].rstrip("\0"), value
    records = [json.loads(l) for l in compat_run["ops_log"].read_text().splitlines()]
    assert len([r for r in records if r["opcode"] == "SETXATTR"]) == 1


def negotiated(log: str, which: str = "flags") -> int:
    """The INIT flags daemon A enabled (``guest_flags``: those the guest offered), from its
    "fuse session started" log line."""
    m = re.search(rf"fuse session started.*?\b{which}=(0x[0-9a-f]+)", log)
    assert m, "no session line in the daemon log"
    return int(m.group(1), 16)


def test_supplementary_group_create(compat_run):
    """With FUSE_CREATE_SUPP_GROUP (sid's kernel) a group member creates in a group-writable
    directory; a guest without it (Debian 12's 6.1) gets EACCES from the host's check (the
    known limit of older kernels, virtiofsd's too).  Each guest must give its one answer, so
    a daemon that stopped taking the flag, or took it and dropped the group, fails on sid."""
    got = info(compat_run, "supplementary_group_create")
    from pyvirtiofsd.fuse import abi
    assert got["sends_groups"] == (compat_run["flavor"] == "sid"), got
    offered = bool(negotiated(compat_run["a_log"], "guest_flags") & abi.FUSE_CREATE_SUPP_GROUP)
    enabled = bool(negotiated(compat_run["a_log"]) & abi.FUSE_CREATE_SUPP_GROUP)
    assert offered == got["sends_groups"], (got, "the guest kernel's offer")
    assert enabled == offered, "the daemon must take FUSE_CREATE_SUPP_GROUP whenever offered"
    made = compat_run["a"] / got["path"] / "by-member"
    assert not (compat_run["a"] / got["path"] / "by-outsider").exists()
    if offered:
        assert got["outcome"] == "ok", got
        assert (os.stat(made).st_uid, os.stat(made).st_gid) == (1000, 1000)
    else:
        assert got["outcome"] == "EACCES" and not made.exists(), got
