"""Faults: the front-end vanishing mid-request, a guest that never reads its replies, host
file systems that fail (ENOSPC on a full tmpfs, EROFS on a read-only bind mount, EIO from a
host FUSE mount that fails reads, EMFILE under a low RLIMIT_NOFILE), INTERRUPT of a request
blocked in the host file system, and SIGTERM while writes are in flight.

Each error reaches the guest as the errno the host gave, and the daemon goes on serving.

The EIO and "blocked" file systems are real kernel FUSE mounts on the host, served by this
project's own FUSE ``Server`` over ``/dev/fuse`` (:class:`HostFuse`): the daemon under test
sees them as any other host directory.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
import subprocess
import threading
import time

import pytest

from pyvirtiofsd.filesystem import Attr, Entry, FileSystem, Opened
from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.fuse.request import BytesRequest
from pyvirtiofsd.server import Server, ServerOptions
from pyvirtiofsd.vhost_user import codec
from pyvirtiofsd.vhost_user.protocol import FrontendReq as R


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def call_err(fuse, *a, **kw) -> int:
    return -fuse.call(*a, **kw).error


def open_file(fuse, parent, name, flags=os.O_RDWR):
    head = fuse.lookup(parent, name)[0]
    return head.nodeid, fuse.open(head.nodeid, flags).fh


# ---- a host FUSE file system served by our own Server over /dev/fuse --------------------


class FaultyFs(FileSystem):
    """Root with two files: ``bad`` (every read fails with EIO) and ``slow`` (reads block
    until ``unblock`` is set)."""

    FILES = {b"bad": 2, b"slow": 3}

    def __init__(self):
        self.unblock = threading.Event()
        self.slow_started = threading.Event()

    def _attr(self, ino):
        if ino == 1:
            return Attr(ino=1, mode=stat.S_IFDIR | 0o755, nlink=2)
        return Attr(ino=ino, mode=stat.S_IFREG | 0o644, size=4096, blocks=8)

    def lookup(self, ctx, parent, name):
        if parent != 1 or name not in self.FILES:
            raise OSError(errno.ENOENT, "no such file")
        return Entry(self.FILES[name], 0, self._attr(self.FILES[name]), 0.0, 0.0)

    def getattr(self, ctx, inode, fh):
        return self._attr(inode), 0.0

    def open(self, ctx, inode, flags):
        return Opened(inode)

    def opendir(self, ctx, inode, flags):
        return Opened(0)

    def read(self, ctx, inode, fh, offset, size, flags):
        if inode == 2:
            raise OSError(errno.EIO, "media error")
        self.slow_started.set()
        if not self.unblock.wait(60):
            raise OSError(errno.ETIMEDOUT, "never released")
        return b"s" * min(size, 4096 - min(offset, 4096))

    def release(self, ctx, inode, fh, flags, flush, lock_owner):
        pass

    def flush(self, ctx, inode, fh, lock_owner):
        pass

    def forget(self, ctx, inode, nlookup):
        pass

    def batch_forget(self, ctx, requests):
        pass


class HostFuse:
    """Mount ``fs`` at ``path`` through /dev/fuse and serve it with threads."""

    def __init__(self, fs: FileSystem, path: str, threads: int = 4):
        self.path = path
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        libc = ctypes.CDLL(None, use_errno=True)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if libc.mount(b"pvfs-faulty", path.encode(), b"fuse", 0, opts) != 0:
            e = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(e, f"mount fuse at {path}: {os.strerror(e)}")
        self.server = Server(fs, ServerOptions(cache="never"))
        self.threads = [threading.Thread(target=self._serve, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _serve(self):
        while True:
            try:
                data = os.read(self.fd, 1 << 21)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                return   # ENODEV: aborted or unmounted
            req = BytesRequest(data, 1 << 20)
            self.server.handle(req)
            if req.used_len:
                try:
                    os.write(self.fd, req.reply)
                except OSError:
                    pass    # the request was interrupted meanwhile (ENOENT)

    def close(self):
        """Abort the connection (fusectl), so a daemon still holding files in it gets
        ENOTCONN instead of waiting forever for a reply; then unmount and stop serving."""
        conn = os.minor(os.stat(self.path).st_dev)
        ctl = "/sys/fs/fuse/connections"
        if not os.path.exists(f"{ctl}/{conn}"):
            subprocess.run(["mount", "-t", "fusectl", "fusectl", ctl], check=False)
        try:
            with open(f"{ctl}/{conn}/abort", "w") as f:
                f.write("1")
        except OSError:
            pass
        subprocess.run(["umount", "-l", self.path], check=False)
        for t in self.threads:
            t.join(5)
        os.close(self.fd)


@pytest.fixture
def faulty(shared):
    fs = FaultyFs()
    mnt = shared / "faulty"
    mnt.mkdir()
    host = HostFuse(fs, str(mnt))
    yield fs
    fs.unblock.set()
    host.close()


# ---- the front-end goes away ------------------------------------------------------------


def test_disconnect_in_the_middle_of_requests_exits_zero(start_daemon, shared):
    (shared / "big").write_bytes(os.urandom(4 << 20))
    daemon = start_daemon()
    fe = VhostUserFrontend(daemon.socket_path, queue_size=64).connect()
    fuse = FuseClient(fe)
    fuse.init()
    nodeid, fh = open_file(fuse, 1, b"big")
    for i in range(24):   # reads and writes of 1 MiB in flight
        if i % 2:
            fuse.submit(Opcode.FUSE_READ, nodeid, abi.fuse_read_in.build(fh=fh, offset=0, size=1 << 20),
                        1 << 20)
        else:
            fuse.submit(Opcode.FUSE_WRITE, nodeid, abi.fuse_write_in.build(fh=fh, offset=i << 16,
                        size=1 << 20), 16, data=bytes(1 << 20))
    fe.close()   # mid-flight: the guest is gone
    assert daemon.wait(15) == 0, daemon.log()


def test_disconnect_while_a_request_is_blocked_in_the_host_fs(start_daemon, shared, faulty):
    """The guest goes away while a worker sits in a host read that does not return.  The
    kernel does not abandon a FUSE request its server has already taken, so no process
    with a thread in it can finish exiting until the host file system answers; the daemon
    must exit 0 as soon as it does, without a reply to a guest that is gone."""
    daemon = start_daemon()
    fe = VhostUserFrontend(daemon.socket_path).connect()
    fuse = FuseClient(fe)
    fuse.init()
    d = fuse.lookup(1, b"faulty")[0].nodeid
    nodeid, fh = open_file(fuse, d, b"slow", os.O_RDONLY)
    fuse.submit(Opcode.FUSE_READ, nodeid, abi.fuse_read_in.build(fh=fh, size=4096), 4096)
    assert faulty.slow_started.wait(10)
    fe.close()
    time.sleep(3)
    faulty.unblock.set()            # the host file system recovers
    t0 = time.monotonic()
    assert daemon.wait(30) == 0, daemon.log()
    assert time.monotonic() - t0 < 15


def test_guest_that_never_reads_replies(start_daemon, shared):
    daemon = start_daemon()
    fe = VhostUserFrontend(daemon.socket_path, queue_size=16).connect()
    fuse = FuseClient(fe)
    fuse.init()
    q = fe.queues[1]
    base = q.used_idx()             # INIT's
    submitted = 0
    with pytest.raises(BlockingIOError):
        for _ in range(1000):      # never collects a used element, never reads the call fd
            fuse.submit(Opcode.FUSE_GETATTR, 1, abi.fuse_getattr_in.build(), abi.FUSE_ATTR_OUT_SIZE)
            submitted += 1
    assert submitted == 8          # 16 descriptors, two per request: the ring is full
    # The device has answered them all into the used ring nobody reads ...
    deadline = time.monotonic() + 10
    while q.used_idx() != (base + submitted) & 0xFFFF and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.used_idx() == (base + submitted) & 0xFFFF
    # ... and the control socket stays responsive.
    for _ in range(20):
        assert fe.get_u64(R.GET_QUEUE_NUM) == 2
        assert fe.get_u64(R.GET_FEATURES)
    fe.close()
    assert daemon.wait(15) == 0, daemon.log()


# ---- host errors reach the guest as errnos --------------------------------------------------


def test_enospc_on_a_full_host_fs(start_daemon, connect, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    sh(f"mount -t tmpfs -o size=256k tmpfs {small}")
    try:
        fuse = connect(start_daemon(shared_dir=small))
        head, attr, opened = fuse.create(1, b"fill")
        codes = set()
        for i in range(40):
            r = fuse.call(Opcode.FUSE_WRITE, head.nodeid, abi.fuse_write_in.build(
                fh=opened.fh, offset=i * 65536, size=65536), 16, data=b"z" * 65536)
            codes.add(-r.error)
            if r.error:
                break
        assert errno.ENOSPC in codes
        # Still serving: free the space and write again.
        fuse.release(head.nodeid, opened.fh)
        fuse.unlink(1, b"fill")
        fuse.forget(head.nodeid)    # the guest lets go: the last reference to the blocks
        time.sleep(0.2)
        head, attr, opened = fuse.create(1, b"again")
        assert fuse.write(head.nodeid, opened.fh, 0, b"ok") == 2
        fuse.release(head.nodeid, opened.fh)
        assert (small / "again").read_bytes() == b"ok"
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_erofs_on_a_read_only_bind_mount(start_daemon, connect, shared, tmp_path):
    (shared / "f").write_bytes(b"readable")
    ro = tmp_path / "ro"
    ro.mkdir()
    sh(f"mount --bind {shared} {ro} && mount -o remount,bind,ro {ro}")
    try:
        fuse = connect(start_daemon(shared_dir=ro))
        assert call_err(fuse, Opcode.FUSE_CREATE, 1, abi.fuse_create_in.build(
            flags=os.O_RDWR, mode=0o644) + b"new\0", abi.FUSE_ENTRY_OUT_SIZE + 32) == errno.EROFS
        assert call_err(fuse, Opcode.FUSE_MKDIR, 1, abi.fuse_mkdir_in.build(mode=0o755) + b"d\0",
                        abi.FUSE_ENTRY_OUT_SIZE) == errno.EROFS
        nodeid = fuse.lookup(1, b"f")[0].nodeid
        assert call_err(fuse, Opcode.FUSE_OPEN, nodeid, abi.fuse_open_in.build(flags=os.O_RDWR),
                        32) == errno.EROFS
        assert call_err(fuse, Opcode.FUSE_UNLINK, 1, b"f\0") == errno.EROFS
        fh = fuse.open(nodeid, os.O_RDONLY).fh
        assert fuse.read(nodeid, fh, 0, 100) == b"readable"     # still serving
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_eio_from_the_host_fs(start_daemon, connect, shared, faulty):
    fuse = connect(start_daemon())
    d = fuse.lookup(1, b"faulty")[0].nodeid
    nodeid, fh = open_file(fuse, d, b"bad", os.O_RDONLY)
    assert call_err(fuse, Opcode.FUSE_READ, nodeid, abi.fuse_read_in.build(fh=fh, size=4096),
                    4096) == errno.EIO
    # The error is that request's only: the daemon goes on.
    (shared / "fine").write_bytes(b"fine")
    n2, fh2 = open_file(fuse, 1, b"fine", os.O_RDONLY)
    assert fuse.read(n2, fh2, 0, 10) == b"fine"
    assert call_err(fuse, Opcode.FUSE_READ, nodeid, abi.fuse_read_in.build(fh=fh, size=10), 10) \
        == errno.EIO


def test_emfile_under_a_low_fd_limit(start_daemon, connect, shared):
    """With an O_PATH fd per inode (``--inode-file-handles never``), lookups hit the fd
    limit: EMFILE, and the daemon serves again once they are forgotten."""
    for i in range(200):
        (shared / f"f{i}").write_bytes(b"")
    daemon = start_daemon("--inode-file-handles", "never")
    fuse = connect(daemon)
    in_use = len(os.listdir(f"/proc/{daemon.serving_pid()}/fd"))
    limit = in_use + 40
    subprocess.run(["prlimit", f"--pid={daemon.serving_pid()}", f"--nofile={limit}:{limit}"], check=True)
    held, codes = [], set()
    for i in range(200):
        r = fuse.call(Opcode.FUSE_LOOKUP, 1, b"f%d\0" % i, abi.FUSE_ENTRY_OUT_SIZE)
        if r.error:
            codes.add(-r.error)
            break
        held.append(FuseClient.parse_entry(r.body)[0].nodeid)
    assert codes == {errno.EMFILE}, codes
    assert 10 < len(held) < 60
    # Give the lookups back: the daemon serves again under the same limit.
    for n in held:
        fuse.forget(n)
    deadline = time.monotonic() + 10
    while True:
        r = fuse.call(Opcode.FUSE_LOOKUP, 1, b"f199\0", abi.FUSE_ENTRY_OUT_SIZE)
        if not r.error or time.monotonic() > deadline:
            break
        time.sleep(0.05)     # FORGETs go on the hiprio queue: let them land
    assert r.error == 0
    assert daemon.proc.poll() is None


def test_file_handles_hold_no_fd_per_inode(start_daemon, connect, shared):
    """The default, ``prefer`` (as root, on a file system that makes handles), under
    ``--rlimit-nofile 256``: 600 lookups (more than the limit) all succeed, and the daemon
    holds at most 256 / 8 inode fds beyond its own (those of the inodes used last)."""
    for i in range(600):
        (shared / f"f{i}").write_bytes(b"")
    daemon = start_daemon("--rlimit-nofile", "256")
    fuse = connect(daemon)
    fds = f"/proc/{daemon.serving_pid()}/fd"
    in_use = len(os.listdir(fds))
    for i in range(600):
        r = fuse.call(Opcode.FUSE_LOOKUP, 1, b"f%d\0" % i, abi.FUSE_ENTRY_OUT_SIZE)
        assert r.error == 0, (i, r.error)
        nodeid = FuseClient.parse_entry(r.body)[0].nodeid
        assert fuse.getattr(nodeid).size == 0
    assert in_use < len(os.listdir(fds)) <= in_use + 256 // 8


# ---- INTERRUPT, SIGTERM -----------------------------------------------------------------


def test_interrupt_of_a_blocked_request(start_daemon, connect, shared, faulty):
    """INTERRUPT is accepted without a reply; the blocked request is not cancelled in the
    host (a passthrough read cannot be), it completes once, and meanwhile everything else
    is served."""
    fuse = connect(start_daemon())
    d = fuse.lookup(1, b"faulty")[0].nodeid
    nodeid, fh = open_file(fuse, d, b"slow", os.O_RDONLY)
    blocked = fuse.submit(Opcode.FUSE_READ, nodeid, abi.fuse_read_in.build(fh=fh, size=100), 100)
    assert faulty.slow_started.wait(10)
    for unique in (blocked.unique, 999_999):        # the blocked one, and one that never was
        intr = fuse.submit(Opcode.FUSE_INTERRUPT, 0, abi.fuse_interrupt_in.build(unique=unique),
                           queue=0, no_reply=True)
        assert fuse.reap(intr).used_len == 0
    for _ in range(10):
        assert fuse.getattr(1).ino                  # served while the read is blocked
        fuse.forget(d, 0)                           # hiprio is alive too
    assert blocked.reply is None
    faulty.unblock.set()
    r = fuse.reap(blocked)
    assert r.error == 0 and r.body == b"s" * 100


def test_sigterm_while_busy_keeps_every_acknowledged_write(start_daemon, shared):
    daemon = start_daemon()
    fe = VhostUserFrontend(daemon.socket_path, queue_size=256).connect()
    fuse = FuseClient(fe, timeout=5)
    fuse.init()
    head, attr, opened = fuse.create(1, b"log")
    acked: dict[int, bytes] = {}
    chunk = 64 << 10
    stop = threading.Event()

    def writer(base):
        i = 0
        while not stop.is_set():
            off = (base + i * 4) * chunk
            data = os.urandom(16) * (chunk // 16)
            try:
                p = fuse.submit(Opcode.FUSE_WRITE, head.nodeid, abi.fuse_write_in.build(
                    fh=opened.fh, offset=off, size=chunk), 16, data=data)
                r = fuse.reap(p, timeout=5)
            except (TimeoutError, OSError, BlockingIOError):
                return
            if r.error == 0 and abi.fuse_write_out.parse(r.body).size == chunk:
                acked[off] = data
            i += 1

    threads = [threading.Thread(target=writer, args=(b,), daemon=True) for b in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 200:
        time.sleep(0.01)
    os.kill(daemon.proc.pid, signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.log()
    stop.set()
    for t in threads:
        t.join(10)
    fe.close()
    data = (shared / "log").read_bytes()
    lost = [off for off, d in acked.items() if data[off:off + chunk] != d]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes are not in the file"
