"""virtiofsd compatibility through the real daemon: libvirt's exact argv with a listening
fd, ``--print-capabilities`` as libvirt reads it, the fd cost of inode file handles, the
open flags the host sees, and options refused by name."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi

BINARY = shutil.which("pyvirtiofsd", path=os.path.dirname(sys.executable))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fdinfo_flags_of(pid: int, path: Path) -> list[int]:
    """The open flags of every fd of ``pid`` open on ``path`` (compared by inode: inside
    the sandbox the daemon's paths differ from ours)."""
    want = os.stat(path)
    flags = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
            if (st.st_dev, st.st_ino) != (want.st_dev, want.st_ino):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags.append(int(next(l for l in f if l.startswith("flags:")).split()[1], 8))
        except (FileNotFoundError, StopIteration):
            pass
    return flags


# --- libvirt -----------------------------------------------------------------------------

def test_print_capabilities_is_what_libvirt_reads():
    """libvirt's qemuVhostUserFillDomainFS reads the binary's vhost-user JSON: type "fs";
    the features say which option syntaxes we take, and migrate-precopy that libvirt may
    live-migrate the guest (tests/e2e/test_migration_guest.py does so between two QEMUs)."""
    out = subprocess.run([BINARY, "--print-capabilities"], capture_output=True, text=True,
                         check=True).stdout
    caps = json.loads(out)
    assert caps["type"] == "fs"
    assert set(caps["features"]) == {"separate-options", "posix-acl-negotiation-mode",
                                     "security-label-negotiation-mode", "migrate-precopy"}


def libvirt_argv(fd: int, source: Path, *, cache="always", sandbox="chroot", xattr="xattr",
                 thread_pool_size=4, debug=True) -> list[str]:
    """What qemuVirtioFSBuildCommandLine (libvirt src/qemu/qemu_virtiofs.c) builds for
    ``<filesystem type='mount'><driver type='virtiofs' queue='1024'/><binary path=.../>``:
    ``--fd=N``, one ``-o`` with source (commas doubled), cache, sandbox, xattr/no_xattr,
    [no_]flock, [no_]posix_lock, then --thread-pool-size and -d."""
    src = str(source).replace(",", ",,")
    opts = f"source={src},cache={cache},sandbox={sandbox},{xattr},no_flock,no_posix_lock"
    argv = [BINARY, f"--fd={fd}", "-o", opts, f"--thread-pool-size={thread_pool_size}"]
    return argv + (["-d"] if debug else [])


@contextmanager
def libvirt_started(tmp_path: Path, share: Path, log, **argv_kw):
    """The daemon started as libvirt starts it -- libvirt binds and listens itself, then
    passes the socket as ``--fd`` -- and an INITed FuseClient of ours connected to it."""
    sock_path = tmp_path / "fs.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    argv = libvirt_argv(listener.fileno(), share, **argv_kw)
    proc = subprocess.Popen(argv, pass_fds=[listener.fileno()], stdout=log,
                            stderr=subprocess.STDOUT)
    listener.close()
    try:
        fe = VhostUserFrontend(str(sock_path)).connect()
        try:
            fuse = FuseClient(fe)
            fuse.init()
            yield fuse
        finally:
            fe.close()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("sandbox", ["chroot", "namespace"])
def test_libvirt_argv_serves_the_front_end(tmp_path, sandbox):
    """The exact argv libvirt passes, with a listening socket as its --fd; our front-end
    then connects to the path."""
    share = tmp_path / "a,dir"          # a comma, as libvirt escapes it
    share.mkdir()
    (share / "hello").write_bytes(b"hi from the host\n")
    os.setxattr(share / "hello", "user.origin", b"host")
    with open(tmp_path / "virtiofsd.log", "wb") as log, \
            libvirt_started(tmp_path, share, log, sandbox=sandbox) as fuse:
        head, attr = fuse.lookup(1, b"hello")
        assert attr.size == len(b"hi from the host\n")
        assert head.entry_valid == 86400                   # cache=always
        opened = fuse.open(head.nodeid, os.O_RDONLY)
        assert opened.open_flags & abi.FOPEN_KEEP_CACHE
        assert fuse.read(head.nodeid, opened.fh, 0, 100) == b"hi from the host\n"
        value = fuse.check(abi.Opcode.FUSE_GETXATTR, head.nodeid,
                           abi.fuse_getxattr_in.pack(64, 0) + b"user.origin\0", 64)
        assert value == b"host"                            # ,xattr took effect
    text = (tmp_path / "virtiofsd.log").read_text()
    assert f"mode={sandbox}" in text and "debug" in text.lower(), text[-2000:]


def test_libvirt_cache_none_and_no_xattr(tmp_path):
    share = tmp_path / "s"
    share.mkdir()
    (share / "f").write_bytes(b"x")
    with libvirt_started(tmp_path, share, subprocess.DEVNULL, cache="none", xattr="no_xattr",
                         debug=False) as fuse:
        head, _ = fuse.lookup(1, b"f")
        assert head.entry_valid == 0
        assert fuse.open(head.nodeid, os.O_RDONLY).open_flags & abi.FOPEN_DIRECT_IO
        r = fuse.call(abi.Opcode.FUSE_GETXATTR, head.nodeid,
                      abi.fuse_getxattr_in.pack(64, 0) + b"user.x\0", 64)
        assert r.error == -38                              # ENOSYS: xattrs off


def test_libvirt_lock_options_are_refused_by_name(tmp_path):
    """libvirt adds ,flock / ,posix_lock for <lock posix='on' flock='on'/>: we cannot
    provide host-wide locks, and say so instead of ignoring them."""
    for lock in ("flock", "posix_lock"):
        r = subprocess.run([BINARY, "--fd=3", "-o", f"source={tmp_path},{lock}"],
                           capture_output=True, text=True)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and f"-o {lock}" in r.stderr and "not supported" in r.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--uid-map", "0:100000:65536"], "--uid-map"),
    (["--gid-map", ":0:100000:"], "--gid-map"),
    (["--migration-mode", "by-inode-number"], "--migration-mode"),
    (["--migration-on-error", "ignore"], "--migration-on-error"),
    (["--xattrmap", ":bogus:all:::"], "--xattrmap: unknown rule type"),
    (["--translate-uid", "map:0:1000"], "--translate-uid"),
    (["--posix-acl", "--translate-uid", "map:0:1000:1"], "cannot be combined"),
    (["--inode-file-handles=sometimes"], "--inode-file-handles"),
    (["--cache", "sometimes"], "--cache"),
    (["-o", "timeout=5"], "-o timeout=5"),
])
def test_unsupported_or_bad_options_fail_with_one_line(tmp_path, argv, needle):
    r = subprocess.run([BINARY, "--socket-path", str(tmp_path / "s"), "--shared-dir",
                        str(tmp_path), *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


def test_syslog_as_kata_passes_it(tmp_path, shared):
    """Kata starts virtiofsd with --syslog --cache=... --shared-dir=... --fd=3: the log lines
    arrive as syslog datagrams (facility daemon), from inside the sandbox and its filter."""
    log_sock = tmp_path / "log"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(log_sock))
    sink.settimeout(20)
    sock_path = tmp_path / "fs.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    fd = listener.fileno()
    proc = subprocess.Popen([BINARY, "--syslog", "--cache=auto", f"--shared-dir={shared}",
                             f"--fd={fd}", "--thread-pool-size=1"], pass_fds=[fd],
                            env={**os.environ, "PYVIRTIOFSD_SYSLOG_SOCKET": str(log_sock)},
                            stderr=subprocess.PIPE)
    listener.close()
    try:
        fe = VhostUserFrontend(str(sock_path)).connect()
        try:
            FuseClient(fe).init()
        finally:
            fe.close()
        lines = []
        while not any(b"fuse session started" in l for l in lines):
            lines.append(sink.recv(65536))
    finally:
        proc.terminate()
        proc.wait(10)
        sink.close()
    assert all(re.match(rb"<\d+>pyvirtiofsd\[\d+\]: ", l) for l in lines), lines[:3]
    started = next(l for l in lines if b"fuse session started" in l)
    assert started.startswith(b"<30>")            # daemon.info
    assert proc.stderr.read() == b""               # nothing went to stderr


def test_every_virtiofsd_option_is_known(tmp_path):
    """Each option in virtiofsd 1.14's --help parses (accepted, or refused by name) -- none
    reaches argparse's 'unrecognized arguments'."""
    from pyvirtiofsd.cli import build_parser
    options = ["--shared-dir", "--tag", "--socket", "--socket-path", "--socket-group", "--fd",
               "--thread-pool-size", "--xattr", "--posix-acl", "--xattrmap", "--sandbox",
               "--readonly", "--seccomp", "--announce-submounts", "--no-announce-submounts",
               "--inode-file-handles", "--cache", "--allow-mmap", "--no-readdirplus",
               "--writeback", "--allow-direct-io", "--print-capabilities", "--modcaps",
               "--log-level", "--syslog", "--rlimit-nofile", "-o", "-d", "--no-killpriv-v2",
               "--killpriv-v2", "-f", "--security-label", "--uid-map", "--gid-map",
               "--translate-uid", "--translate-gid", "--preserve-noatime", "--migration-mode",
               "--migration-on-error", "--migration-verify-handles",
               "--migration-confirm-paths", "-h", "--help", "-V", "--version"]
    known = set(build_parser()._option_string_actions)
    assert not [o for o in options if o not in known]


# --- what the options do, seen from the host ----------------------------------------------

def test_inode_file_handles_hold_no_fd_per_inode(start_daemon, connect, shared):
    """400 files looked up under --rlimit-nofile=1024: one O_PATH fd each without handles;
    with them, only the idle fds of the ones used last, at most 1024 / 8."""
    for k in range(400):
        (shared / f"f{k:03}").write_bytes(b"")
    counts = {}
    for mode in ("never", "mandatory"):
        daemon = start_daemon(f"--inode-file-handles={mode}", "--rlimit-nofile=1024",
                              socket_name=f"{mode}.sock")
        fuse = connect(daemon)
        pid = daemon.serving_pid()
        before = fd_count(pid)
        for k in range(400):
            fuse.lookup(1, b"f%03d" % k)
        counts[mode] = fd_count(pid) - before
        assert fuse.getattr(fuse.lookup(1, b"f123")[0].nodeid).ino == os.stat(shared / "f123").st_ino
    print(f"fds held for 400 looked-up inodes: {counts}")
    assert counts["never"] >= 400 and 0 < counts["mandatory"] <= 1024 // 8 + 2


@pytest.mark.parametrize("options,wanted,dropped", [
    ((), 0, os.O_DIRECT | os.O_NOATIME),
    (("--allow-direct-io", "--preserve-noatime"), os.O_DIRECT | os.O_NOATIME, 0),
])
def test_o_direct_and_o_noatime_reach_the_host_only_when_asked(start_daemon, connect, shared,
                                                              options, wanted, dropped):
    (shared / "f").write_bytes(b"\0" * 8192)
    daemon = start_daemon(*options)
    fuse = connect(daemon)
    head, _ = fuse.lookup(1, b"f")
    opened = fuse.open(head.nodeid, os.O_RDONLY | os.O_DIRECT | os.O_NOATIME)
    flags = [f for f in fdinfo_flags_of(daemon.serving_pid(), shared / "f")
             if not f & os.O_PATH]                            # the inode's own O_PATH fd
    assert flags, "the daemon holds no open fd on the file"
    assert all(f & wanted == wanted and not f & dropped for f in flags), [oct(f) for f in flags]
    fuse.release(head.nodeid, opened.fh)


GUEST_OFFERS = (0x7BFFFFFB | abi.FUSE_SECURITY_CTX | abi.FUSE_CREATE_SUPP_GROUP
                | abi.FUSE_DIRECT_IO_ALLOW_MMAP)


@pytest.mark.parametrize("options,wanted,unwanted", [
    ((), ["FUSE_SUBMOUNTS", "FUSE_CREATE_SUPP_GROUP", "FUSE_DO_READDIRPLUS"],
     ["FUSE_SECURITY_CTX", "FUSE_POSIX_ACL", "FUSE_HANDLE_KILLPRIV_V2", "FUSE_WRITEBACK_CACHE",
      "FUSE_DIRECT_IO_ALLOW_MMAP"]),
    (("--security-label=auto", "--posix-acl=auto", "--killpriv-v2", "--writeback",
      "--allow-mmap", "--no-readdirplus", "--no-announce-submounts"),
     ["FUSE_SECURITY_CTX", "FUSE_POSIX_ACL", "FUSE_DONT_MASK", "FUSE_SETXATTR_EXT",
      "FUSE_HANDLE_KILLPRIV_V2", "FUSE_WRITEBACK_CACHE", "FUSE_DIRECT_IO_ALLOW_MMAP"],
     ["FUSE_SUBMOUNTS", "FUSE_DO_READDIRPLUS", "FUSE_READDIRPLUS_AUTO"]),
    (("-o", "source=.,posix_acl,security_label,killpriv_v2,writeback,no_readdirplus"),
     ["FUSE_SECURITY_CTX", "FUSE_POSIX_ACL", "FUSE_HANDLE_KILLPRIV_V2", "FUSE_WRITEBACK_CACHE"],
     ["FUSE_DO_READDIRPLUS"]),
])
def test_options_decide_the_init_flags(start_daemon, connect, shared, options, wanted, unwanted):
    options = tuple(o.replace("source=.", f"source={shared}") for o in options)
    daemon = start_daemon(*options)
    fuse = connect(daemon, init=False)
    fuse.init(flags=GUEST_OFFERS)
    got = fuse.init_out.flags | fuse.init_out.flags2 << 32
    assert [f for f in wanted if not got & getattr(abi, f)] == []
    assert [f for f in unwanted if got & getattr(abi, f)] == []


def test_posix_acl_always_refuses_a_guest_without_acls(start_daemon, connect):
    daemon = start_daemon("--posix-acl")          # bare: always, as virtiofsd
    fuse = connect(daemon, init=False)
    with pytest.raises(OSError) as ei:
        fuse.init(flags=0x7BFFFFFB & ~abi.FUSE_POSIX_ACL)
    assert ei.value.errno == 71                    # EPROTO


def test_create_time_features_through_the_sandboxed_daemon(start_daemon, connect, shared):
    """Security context (stored through the xattr map as user.virtiofs.security.*: the
    sandboxed daemon has no CAP_SYS_ADMIN for security.* itself), the supplementary-group
    extension, killpriv_v2 and SETXATTR_EXT's ACL_KILL_SGID -- each a system call the
    daemon makes under its seccomp filter."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from fusewire import groups_ext, secctx_block, setxattr_ext

    os.chmod(shared, 0o777)
    grp = shared / "grp"
    grp.mkdir()
    os.chown(grp, 0, 4242)
    os.chmod(grp, 0o775)
    daemon = start_daemon("--security-label=auto", "--xattrmap=:map::user.virtiofs.:",
                          "--killpriv-v2", "--posix-acl=auto")
    fuse = connect(daemon, init=False)
    fuse.init(flags=0x7BFFFFFB | abi.FUSE_SECURITY_CTX | abi.FUSE_CREATE_SUPP_GROUP)
    entry = abi.FUSE_ENTRY_OUT_SIZE
    fuse.check(abi.Opcode.FUSE_MKDIR, 1, abi.fuse_mkdir_in.pack(0o755, 0) + b"labelled\0",
               entry, extensions=secctx_block((b"security.selinux", b"system_u:object_r:t\0")))
    assert os.getxattr(shared / "labelled", "user.virtiofs.security.selinux") == \
        b"system_u:object_r:t\0"
    body = fuse.check(abi.Opcode.FUSE_CREATE, 1,
                      abi.fuse_create_in.build(flags=os.O_RDWR | os.O_CREAT, mode=0o644)
                      + b"labelled-file\0", entry + abi.fuse_open_out.size,
                      extensions=secctx_block((b"security.selinux", b"file_t\0")))
    assert os.getxattr(shared / "labelled-file", "user.virtiofs.security.selinux") == b"file_t\0"
    fuse.release(abi.fuse_entry_out_head.parse(body).nodeid,
                 abi.fuse_open_out.parse(body, entry).fh)
    g = fuse.lookup(1, b"grp")[0].nodeid
    fuse.check(abi.Opcode.FUSE_MKDIR, g, abi.fuse_mkdir_in.pack(0o755, 0) + b"member\0", entry,
               uid=1000, gid=1000, extensions=groups_ext(4242))
    assert os.stat(grp / "member").st_uid == 1000
    (shared / "suid").write_bytes(b"x")
    os.chmod(shared / "suid", 0o4755)
    node = fuse.lookup(1, b"suid")[0].nodeid
    fh = fuse.open(node, os.O_RDWR).fh
    fuse.check(abi.Opcode.FUSE_WRITE, node,
               abi.fuse_write_in.build(fh=fh, size=1, write_flags=abi.FUSE_WRITE_KILL_SUIDGID),
               abi.fuse_write_out.size, data=b"y")
    assert oct(os.stat(shared / "suid").st_mode & 0o7777) == oct(0o755)
    os.chmod(shared / "suid", 0o2775)
    fuse.check(abi.Opcode.FUSE_SETXATTR, node,
               setxattr_ext(b"user.acl_stand_in", b"v",
                            setxattr_flags=abi.FUSE_SETXATTR_ACL_KILL_SGID))
    assert os.getxattr(shared / "suid", "user.virtiofs.user.acl_stand_in") == b"v"
    fuse.release(node, fh)
