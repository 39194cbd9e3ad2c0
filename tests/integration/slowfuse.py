"""A tiny host FUSE file system whose answers take as long as a test wants: a hung NFS
server, on demand, inside a shared directory.

It speaks the raw /dev/fuse protocol itself (no libfuse, no fusermount): open /dev/fuse,
mount(2) it with ``fd=N``, and a thread reads the kernel's requests and answers them.  The
struct layouts are the daemon's own (:mod:`pyvirtiofsd.fuse.abi`), seen from the other side.

The file system: a root directory with one regular file, ``slow`` (nodeid 2).  What is slow
is armed after mounting (the mount itself needs quick answers)::

    with mounted(path) as fs:
        fs.delay = 3.0
        fs.slow = {"lookup", "getattr"}    # LOOKUP of "slow", GETATTR of it; or "statfs"

A delayed answer is sent by a thread of its own, so other requests (the root's GETATTR,
LOOKUP of other names) are answered at once while one sleeps.  Nothing is cached by the
kernel (entry and attribute timeouts are 0): every stat of ``slow`` reaches us.

Needs root (CAP_SYS_ADMIN) and /dev/fuse: the ``fuse`` file system is built into Debian's
kernels (no package needed: mount(2) is called directly, not /bin/mount or fusermount).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import stat
import threading
import time

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode

ROOT = abi.FUSE_ROOT_ID
SLOW = 2
SLOW_NAME = b"slow"
SLOW_DATA = b"slow file\n"
MNT_DETACH = 2
MS_NOSUID = 2
MS_NODEV = 4
# FORGET and BATCH_FORGET get no reply; an INTERRUPT needs none (the request it names is
# answered anyway when its delay is over).
NO_REPLY = {Opcode.FUSE_FORGET, Opcode.FUSE_BATCH_FORGET, Opcode.FUSE_INTERRUPT}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


class SlowFuse:
    def __init__(self, mountpoint):
        self.mountpoint = os.fsencode(mountpoint)
        self.delay = 0.0
        self.slow: set[str] = set()       # of "lookup", "getattr", "statfs"
        self.started = time.time()
        self.calls: list[tuple[str, int]] = []   # (op, nodeid) of every request, in order
        self.delayed = 0                  # delayed answers sent
        self._stop = threading.Event()
        self._timers: list[threading.Thread] = []
        self.fd = -1
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- the file system ---------------------------------------------------------------------

    def _attr(self, nodeid: int) -> bytes:
        t = int(self.started)
        if nodeid == ROOT:
            mode, nlink, size = stat.S_IFDIR | 0o755, 2, 0
        else:
            mode, nlink, size = stat.S_IFREG | 0o644, 1, len(SLOW_DATA)
        return abi.fuse_attr.build(ino=nodeid, size=size, blocks=(size + 511) // 512,
                                   atime=t, mtime=t, ctime=t, mode=mode, nlink=nlink,
                                   blksize=4096)

    def _answer(self, opcode: int, nodeid: int, args: bytes) -> tuple[int, bytes, bool]:
        """(errno, body, delayed?) for one request."""
        if opcode == Opcode.FUSE_INIT:
            init = abi.fuse_init_in.parse(args.ljust(abi.fuse_init_in.size, b"\0"))
            return 0, abi.fuse_init_out.build(
                major=7, minor=31, max_readahead=init.max_readahead,
                flags=abi.FUSE_PARALLEL_DIROPS | abi.FUSE_ASYNC_READ, max_background=64,
                congestion_threshold=48, max_write=1 << 17, time_gran=1), False
        if opcode == Opcode.FUSE_LOOKUP:
            name = args.split(b"\0", 1)[0]
            if nodeid != ROOT or name != SLOW_NAME:
                return errno.ENOENT, b"", False
            body = abi.fuse_entry_out_head.build(nodeid=SLOW, generation=1) + self._attr(SLOW)
            return 0, body, "lookup" in self.slow
        if opcode == Opcode.FUSE_GETATTR:
            if nodeid not in (ROOT, SLOW):
                return errno.ENOENT, b"", False
            body = abi.fuse_attr_out_head.build() + self._attr(nodeid)
            return 0, body, nodeid == SLOW and "getattr" in self.slow
        if opcode == Opcode.FUSE_STATFS:
            body = abi.fuse_kstatfs.build(blocks=1000, bfree=500, bavail=500, files=10,
                                          ffree=8, bsize=4096, namelen=255, frsize=4096)
            return 0, body, "statfs" in self.slow
        if opcode in (Opcode.FUSE_OPENDIR, Opcode.FUSE_OPEN):
            return 0, abi.fuse_open_out.build(fh=nodeid), False
        if opcode in (Opcode.FUSE_RELEASEDIR, Opcode.FUSE_RELEASE, Opcode.FUSE_FLUSH):
            return 0, b"", False
        if opcode == Opcode.FUSE_READDIR:
            ri = abi.fuse_read_in.parse(args)
            entries = [(ROOT, stat.S_IFDIR, b"."), (ROOT, stat.S_IFDIR, b".."),
                       (SLOW, stat.S_IFREG, SLOW_NAME)]
            out = b""
            for i, (ino, mode, name) in enumerate(entries[ri.offset:], ri.offset + 1):
                rec = abi.pack_dirent(ino, i, mode >> 12, name)
                if len(out) + len(rec) > ri.size:
                    break
                out += rec
            return 0, out, False
        if opcode == Opcode.FUSE_READ:
            ri = abi.fuse_read_in.parse(args)
            return 0, SLOW_DATA[ri.offset:ri.offset + ri.size], False
        return errno.ENOSYS, b"", False     # ACCESS, GETXATTR, STATX...: the kernel copes

    # -- the protocol --------------------------------------------------------------------

    def _reply(self, unique: int, err: int, body: bytes) -> None:
        if err:
            body = b""
        out = abi.fuse_out_header.build(len=abi.fuse_out_header.size + len(body), error=-err,
                                        unique=unique) + body
        try:
            os.write(self.fd, out)
        except OSError as e:
            # ENOENT: the request was interrupted and is gone; ENODEV: unmounted meanwhile
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def _later(self, unique: int, err: int, body: bytes) -> None:
        if not self._stop.wait(self.delay):
            self.delayed += 1
        self._reply(unique, err, body)

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                try:
                    buf = os.read(self.fd, (1 << 17) + 4096)
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EINTR, errno.ENOENT):
                        continue
                    if e.errno == errno.ENODEV:      # unmounted
                        return
                    raise
                h = abi.fuse_in_header.parse(buf)
                args = buf[abi.fuse_in_header.size:h.len]
                try:
                    name = Opcode(h.opcode).name[5:].lower()
                except ValueError:
                    name = str(h.opcode)
                self.calls.append((name, h.nodeid))
                if h.opcode in NO_REPLY:
                    continue
                if h.opcode == Opcode.FUSE_DESTROY:
                    self._reply(h.unique, 0, b"")
                    return
                err, body, delayed = self._answer(h.opcode, h.nodeid, args)
                if delayed and self.delay > 0:
                    t = threading.Thread(target=self._later, args=(h.unique, err, body),
                                         name="slowfuse-delayed", daemon=True)
                    self._timers.append(t)
                    t.start()
                else:
                    self._reply(h.unique, err, body)
        except BaseException as e:    # seen by the test through .error
            self.error = e

    # -- mount and unmount ---------------------------------------------------------------

    def mount(self) -> None:
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        opts = (f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other"
                .encode())
        try:
            _check(_libc.mount(b"slowfuse", self.mountpoint, b"fuse", MS_NOSUID | MS_NODEV,
                               opts), "mount -t fuse " + os.fsdecode(self.mountpoint))
        except BaseException:
            os.close(self.fd)
            raise
        self.thread = threading.Thread(target=self._serve, name="slowfuse", daemon=True)
        self.thread.start()
        os.stat(self.mountpoint)        # INIT answered, the mount usable

    def unmount(self) -> None:
        self._stop.set()               # delayed answers go out now
        for t in self._timers:
            t.join(5)
        rc = _libc.umount2(self.mountpoint, MNT_DETACH)
        if self.thread is not None:
            self.thread.join(5)
        os.close(self.fd)              # aborts the connection: anyone still waiting gets ENOTCONN
        _check(rc, "umount2 " + os.fsdecode(self.mountpoint))


@contextlib.contextmanager
def mounted(mountpoint):
    """A :class:`SlowFuse` mounted at ``mountpoint`` (an existing empty directory)."""
    fs = SlowFuse(mountpoint)
    fs.mount()
    try:
        yield fs
    finally:
        fs.unmount()
    if fs.error is not None:
        raise fs.error
