"""Path safety through the real daemon, driven by our front-end over virtqueues: nothing a
guest names or races ever opens, creates or changes anything outside the shared directory.

tests/unit/test_path_safety.py covers the same rules one request at a time at the server
level; here the whole stack runs (a daemon process, vhost-user, rings), and the host
actively attacks: it swaps a directory for a symlink to the outside thousands of times
while the front-end looks up, opens and creates through it; it mounts /proc inside the
share; it puts a sub-mount in it.  A canary directory beside the share must come out of
every test bit-for-bit unchanged.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time

import pytest

from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.passthrough import PassthroughFs, syscalls
from pyvirtiofsd.server import Server, ServerOptions
from pyvirtiofsd.vhost_user.backend import Backend
from pyvirtiofsd.vhost_user.connection import Connection
from pyvirtiofsd.virtiofs import VirtioFsDevice

RENAME_EXCHANGE = 2


def snapshot(path) -> dict:
    out = {}
    for root, dirs, files in os.walk(path):
        for n in [".", *dirs, *files]:
            p = os.path.join(root, n)
            s = os.lstat(p)
            data = open(p, "rb").read() if stat.S_ISREG(s.st_mode) else None
            out[os.path.relpath(p, path)] = (s.st_mode, s.st_uid, s.st_gid, s.st_size,
                                             s.st_mtime_ns, s.st_ctime_ns, s.st_nlink, data)
    return out


@pytest.fixture
def canary(tmp_path):
    """``tmp_path/outside``: a file, a subdirectory, and a snapshot to compare with."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_bytes(b"SECRET")
    (d / "sub").mkdir()
    (d / "sub" / "deeper").write_bytes(b"x")
    os.chmod(d, 0o777)
    before = snapshot(d)
    yield d
    assert snapshot(d) == before, "something outside the shared directory changed"


def err(reply) -> int:
    return -reply.error


def entry(client, parent, name):
    r = client.call(Opcode.FUSE_LOOKUP, parent, name + b"\0", abi.FUSE_ENTRY_OUT_SIZE)
    if r.error:
        return (None, None), -r.error
    head, attr = FuseClient.parse_entry(r.body)
    return (head.nodeid, attr), 0


# ---- symlinks ---------------------------------------------------------------------------


def test_host_symlinks_out_of_the_share_are_inert(fuse, shared, canary):
    targets = {b"pw": "/etc/passwd", b"up": "..", b"uprel": "../outside/secret",
               b"absdir": str(canary), b"reldir": "../outside", b"root": "/",
               b"procroot": "/proc/self/root", b"loop": "loop"}
    for name, target in targets.items():
        os.symlink(target, shared / name.decode())
    passwd = os.stat("/etc/passwd")
    for name, target in targets.items():
        (nodeid, attr), e = entry(fuse, 1, name)
        assert e == 0 and stat.S_ISLNK(attr.mode), name
        assert attr.size == len(target)                 # the link itself, not its target
        assert fuse.readlink(nodeid) == target.encode()
        assert err(fuse.call(Opcode.FUSE_OPEN, nodeid, abi.fuse_open_in.build(flags=os.O_RDWR),
                             abi.fuse_open_out.size)) == errno.ELOOP
        assert err(fuse.call(Opcode.FUSE_OPENDIR, nodeid, abi.fuse_open_in.build(),
                             abi.fuse_open_out.size)) == errno.ENOTDIR
        for child in (b"secret", b"passwd", b"etc", b"sub", b".."):
            assert entry(fuse, nodeid, child)[1] == errno.ENOTDIR, (name, child)
        # Creating "inside" a symlink never reaches its target.
        assert err(fuse.call(Opcode.FUSE_CREATE, nodeid,
                             abi.fuse_create_in.build(flags=os.O_RDWR, mode=0o644) + b"new\0",
                             abi.FUSE_ENTRY_OUT_SIZE + abi.fuse_open_out.size)) == errno.ENOTDIR
        assert err(fuse.call(Opcode.FUSE_MKDIR, nodeid, abi.fuse_mkdir_in.build(mode=0o755)
                             + b"new\0", abi.FUSE_ENTRY_OUT_SIZE)) == errno.ENOTDIR
        # Truncating "it" refuses instead of truncating the target.
        assert err(fuse.call(Opcode.FUSE_SETATTR, nodeid, abi.fuse_setattr_in.build(
            valid=abi.FATTR_SIZE, size=0), abi.FUSE_ATTR_OUT_SIZE)) == errno.ELOOP
        # A hard link of the link is another link, not the file it names.
        head, attr = fuse.link(nodeid, 1, name + b".hard")
        assert stat.S_ISLNK(attr.mode)
        assert os.readlink(shared / (name + b".hard").decode()) == target
    after = os.stat("/etc/passwd")
    assert (after.st_nlink, after.st_size, after.st_mtime_ns) == \
        (passwd.st_nlink, passwd.st_size, passwd.st_mtime_ns)


def test_guest_made_symlinks_stay_text(fuse, shared, canary):
    for i, target in enumerate([b"/etc/passwd", b"..", b"../outside", str(canary).encode(),
                                b"../../../../../../etc/shadow", b"/proc/self/fd/0"]):
        head, attr = fuse.symlink(1, b"g%d" % i, target)
        assert os.readlink(shared / f"g{i}") == target.decode()
        assert err(fuse.call(Opcode.FUSE_OPEN, head.nodeid, abi.fuse_open_in.build(flags=0),
                             abi.fuse_open_out.size)) == errno.ELOOP
        assert entry(fuse, head.nodeid, b"secret")[1] == errno.ENOTDIR


# ---- names ------------------------------------------------------------------------------

BAD_NAMES = [(b"a/b", errno.EINVAL), (b"/etc/passwd", errno.EINVAL),
             (b"../outside", errno.EINVAL), (b"..", errno.EINVAL), (b".", errno.EINVAL),
             (b"", errno.EINVAL), (b"x" * 256, errno.ENAMETOOLONG),
             (b"x" * 4097, errno.ENAMETOOLONG)]


def _name_ops(name: bytes, ok: bytes, nodeid: int):
    """Every opcode that carries a name, with ``name`` in each name position."""
    z = b"\0"
    return [
        ("MKDIR", Opcode.FUSE_MKDIR, abi.fuse_mkdir_in.build(mode=0o755) + name + z),
        ("MKNOD", Opcode.FUSE_MKNOD, abi.fuse_mknod_in.build(mode=0o100644) + name + z),
        ("CREATE", Opcode.FUSE_CREATE, abi.fuse_create_in.build(flags=os.O_RDWR, mode=0o644) + name + z),
        ("SYMLINK", Opcode.FUSE_SYMLINK, name + z + b"target" + z),
        ("LINK", Opcode.FUSE_LINK, abi.fuse_link_in.build(oldnodeid=nodeid) + name + z),
        ("UNLINK", Opcode.FUSE_UNLINK, name + z),
        ("RMDIR", Opcode.FUSE_RMDIR, name + z),
        ("RENAME old", Opcode.FUSE_RENAME, abi.fuse_rename_in.build(newdir=1) + name + z + b"zz" + z),
        ("RENAME new", Opcode.FUSE_RENAME, abi.fuse_rename_in.build(newdir=1) + ok + z + name + z),
        ("RENAME2 new", Opcode.FUSE_RENAME2, abi.fuse_rename2_in.build(newdir=1) + ok + z + name + z),
    ]


def test_bad_names_in_every_name_position(fuse, shared, canary):
    (shared / "file").write_bytes(b"data")
    nodeid = fuse.lookup(1, b"file")[0].nodeid
    before = snapshot(shared)
    for name, code in BAD_NAMES:
        for what, op, body in _name_ops(name, b"file", nodeid):
            r = fuse.call(op, 1, body, abi.FUSE_ENTRY_OUT_SIZE + abi.fuse_open_out.size)
            assert err(r) == code, (what, name[:20], r.error)
        if name not in (b".", b".."):
            assert entry(fuse, 1, name)[1] == code
    # An embedded NUL ends the name early: what follows is never a second path component.
    for body in (b"file\0/../../etc/passwd\0", b"a\0b\0", b"\0file\0"):
        assert err(fuse.call(Opcode.FUSE_LOOKUP, 1, body, abi.FUSE_ENTRY_OUT_SIZE)) == errno.EINVAL
        assert err(fuse.call(Opcode.FUSE_MKDIR, 1, abi.fuse_mkdir_in.build(mode=0o755) + body,
                             abi.FUSE_ENTRY_OUT_SIZE)) == errno.EINVAL
    assert snapshot(shared) == before
    # ".." at the root is the root: the guest cannot climb out.
    assert fuse.lookup(1, b"..")[0].nodeid == 1


# ---- hard links ---------------------------------------------------------------------------


def test_hard_links_never_reach_outside(start_daemon, connect, shared, canary, tmp_path):
    # A sub-mount inside the share: LINK across it is EXDEV from the host kernel.
    sub = shared / "mnt"
    sub.mkdir()
    assert os.system(f"mount -t tmpfs -o size=1m tmpfs {sub}") == 0, "needs root to mount"
    try:
        # Started after the mount: the sandboxed daemon's mount namespace is a copy taken at
        # start, and later host mounts only reach it from a shared (propagating) host mount.
        fuse = connect(start_daemon())
        (sub / "onmount").write_bytes(b"m")
        m = fuse.lookup(1, b"mnt")[0].nodeid
        x = fuse.lookup(m, b"onmount")[0].nodeid
        assert err(fuse.call(Opcode.FUSE_LINK, 1, abi.fuse_link_in.build(oldnodeid=x) + b"moved\0",
                             abi.FUSE_ENTRY_OUT_SIZE)) == errno.EXDEV
        # Nodeids the guest never got, and directories, cannot be linked.
        for bogus in (0, 999_999, 2**64 - 1):
            assert err(fuse.call(Opcode.FUSE_LINK, 1, abi.fuse_link_in.build(oldnodeid=bogus)
                                 + b"h\0", abi.FUSE_ENTRY_OUT_SIZE)) == errno.EBADF
        (shared / "plain").mkdir()
        plain = fuse.lookup(1, b"plain")[0].nodeid
        assert err(fuse.call(Opcode.FUSE_LINK, 1, abi.fuse_link_in.build(oldnodeid=plain) + b"d\0",
                             abi.FUSE_ENTRY_OUT_SIZE)) == errno.EPERM
        # The parent of the root is not an inode the guest can hold, so not one it can link.
        assert fuse.lookup(1, b"..")[0].nodeid == 1
        assert not (shared / "moved").exists() and not (shared / "h").exists()
    finally:
        os.system(f"umount -l {sub}")


# ---- /proc magic links ------------------------------------------------------------------


def test_proc_magic_links_inside_the_share_are_never_followed(start_daemon, connect, shared, canary):
    proc = shared / "proc"
    proc.mkdir()
    assert os.system(f"mount -t proc proc {proc}") == 0, "needs root to mount proc"
    try:
        daemon = start_daemon()
        fuse = connect(daemon)
        p = fuse.lookup(1, b"proc")[0].nodeid
        (selfn, attr), e = entry(fuse, p, b"self")
        assert e == 0 and stat.S_ISLNK(attr.mode)
        assert entry(fuse, selfn, b"fd")[1] == errno.ENOTDIR
        pids = [n for n in os.listdir(proc) if n.isdigit()][:6] + [str(os.getpid())]
        tried = 0
        for pid in pids:
            (d, _), e = entry(fuse, p, pid.encode())
            if e:
                continue    # exited meanwhile
            for link in (b"root", b"cwd", b"exe"):
                (n, a), e = entry(fuse, d, link)
                if e:
                    continue
                tried += 1
                assert stat.S_ISLNK(a.mode), (pid, link)
                assert err(fuse.call(Opcode.FUSE_OPEN, n, abi.fuse_open_in.build(flags=0),
                                     abi.fuse_open_out.size)) == errno.ELOOP
                for child in (b"etc", b"passwd", b"tmp"):
                    assert entry(fuse, n, child)[1] == errno.ENOTDIR
            (fd, _), e = entry(fuse, d, b"fd")
            if e:
                continue
            for num in range(0, 6):
                (n, a), e = entry(fuse, fd, str(num).encode())
                if e:
                    continue
                tried += 1
                assert stat.S_ISLNK(a.mode)
                assert err(fuse.call(Opcode.FUSE_OPEN, n, abi.fuse_open_in.build(flags=os.O_RDWR),
                                     abi.fuse_open_out.size)) == errno.ELOOP
                assert entry(fuse, n, b"x")[1] == errno.ENOTDIR
        assert tried >= 5, "no magic link was reachable to test"
    finally:
        os.system(f"umount -l {proc}")


# ---- a directory swapped for a symlink, over and over, while the guest works ----------------


def _inprocess(shared):
    """The whole back-end in this process with openat2 turned off: the one-component
    fallback resolver under the same race."""
    syscalls.set_openat2_enabled(False)
    fs = PassthroughFs(shared)
    device = VirtioFsDevice(Server(fs, ServerOptions()), thread_pool_size=4)
    backend = Backend(device)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    t = threading.Thread(target=backend.serve, args=(Connection(theirs),), daemon=True)
    t.start()
    fe = VhostUserFrontend(sock=ours).connect()
    client = FuseClient(fe)
    client.init()

    def close():
        fe.close()
        t.join(10)
        backend.close()
        device.close()
        fs.close()
        syscalls.set_openat2_enabled(True)
    return client, close


class Swapper(threading.Thread):
    """Swap ``d`` (a real directory) with ``d.link`` (a symlink to the canary) atomically,
    as fast as it can, with RENAME_EXCHANGE; then the same with a relative link."""

    def __init__(self, share, canary):
        super().__init__(daemon=True)
        self.share = share
        (share / "d").mkdir()
        (share / "d" / "f").write_bytes(b"inside")
        os.symlink(str(canary), share / "d.link")
        os.symlink("../outside", share / "d.rel")
        self.stop = threading.Event()
        self.swaps = 0

    def run(self):
        fd = os.open(self.share, os.O_PATH | os.O_DIRECTORY)
        try:
            while not self.stop.is_set():
                for other in (b"d.link", b"d.rel"):
                    syscalls.renameat2(fd, b"d", fd, other, RENAME_EXCHANGE)
                    syscalls.renameat2(fd, b"d", fd, other, RENAME_EXCHANGE)
                    self.swaps += 2
        finally:
            os.close(fd)


@pytest.mark.parametrize("where", ["daemon", "in-process-fallback-resolver"])
def test_swapping_a_directory_for_a_symlink_never_escapes(where, start_daemon, connect, shared,
                                                         canary):
    swapper = Swapper(shared, canary)
    if where == "daemon":
        fuse, close = connect(start_daemon()), lambda: None
    else:
        fuse, close = _inprocess(shared)
    swapper.start()
    ops = {"lookup_dir": 0, "read": 0, "create": 0, "mkdir": 0, "refused": 0}
    created = []
    try:
        deadline = time.monotonic() + 4.0
        i = 0
        while time.monotonic() < deadline:
            i += 1
            (d, attr), e = entry(fuse, 1, b"d")
            if e or not stat.S_ISDIR(attr.mode):
                ops["refused"] += 1
                # The guest holds a symlink: through it, nothing.
                if not e:
                    assert entry(fuse, d, b"secret")[1] == errno.ENOTDIR
                continue
            ops["lookup_dir"] += 1
            # Between this LOOKUP and the next requests the host swaps d again and again;
            # the nodeid stays the directory it was (an O_PATH fd), never the symlink.
            (f, fattr), e = entry(fuse, d, b"f")
            if not e:
                assert stat.S_ISREG(fattr.mode)
                r = fuse.call(Opcode.FUSE_OPEN, f, abi.fuse_open_in.build(flags=os.O_RDONLY),
                              abi.fuse_open_out.size)
                if not r.error:
                    fh = abi.fuse_open_out.parse(r.body).fh
                    assert fuse.read(f, fh, 0, 64) == b"inside"
                    fuse.release(f, fh)
                    ops["read"] += 1
            assert entry(fuse, d, b"secret")[1] == errno.ENOENT   # the canary's file
            name = b"c%d" % i
            r = fuse.call(Opcode.FUSE_CREATE, d, abi.fuse_create_in.build(flags=os.O_RDWR, mode=0o644)
                          + name + b"\0", abi.FUSE_ENTRY_OUT_SIZE + abi.fuse_open_out.size)
            if not r.error:
                ops["create"] += 1
                created.append(name)
                fh = abi.fuse_open_out.parse(r.body, abi.FUSE_ENTRY_OUT_SIZE).fh
                nodeid = FuseClient.parse_entry(r.body)[0].nodeid
                fuse.write(nodeid, fh, 0, b"created " + name)
                fuse.release(nodeid, fh)
            r = fuse.call(Opcode.FUSE_MKDIR, d, abi.fuse_mkdir_in.build(mode=0o755) + b"m%d\0" % i,
                          abi.FUSE_ENTRY_OUT_SIZE)
            ops["mkdir"] += not r.error
            fuse.forget(d)
    finally:
        swapper.stop.set()
        swapper.join(10)
        close()
    assert swapper.swaps > 1000 and ops["lookup_dir"] > 20 and ops["create"] > 20, (swapper.swaps, ops)
    # Everything the guest created is inside the share, in the real directory.
    real = shared / "d"
    assert real.is_dir() and not real.is_symlink()
    for name in created:
        assert (real / name.decode()).read_bytes() == b"created " + name
    print(f"\n{where}: {swapper.swaps} swaps, {ops}")
