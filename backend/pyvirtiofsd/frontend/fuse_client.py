"""A FUSE client over virtqueues: what the guest kernel's virtio-fs driver does, in Python.

Requests are laid out in guest RAM (header + arguments + data readable, reply area
writable), optionally split into many descriptors or put in an indirect table, so tests
can exercise every way a guest may shape a chain.  ``call`` is one synchronous request;
``submit``/``reap`` keep several in flight (the benchmark's queue depth).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time

from ..fuse import abi
from ..fuse.abi import Opcode
from .vhost import VhostUserFrontend
from .virtqueue import DriverQueue

HIPRIO = 0
REQUEST_QUEUE = 1


@dataclasses.dataclass
class Reply:
    unique: int
    error: int          # 0 or -errno
    body: bytes         # the reply after fuse_out_header
    used_len: int

    def check(self) -> bytes:
        if self.error:
            raise OSError(-self.error, f"{os.strerror(-self.error)} (FUSE reply)")
        return self.body


@dataclasses.dataclass
class Pending:
    unique: int
    queue: DriverQueue
    head: int
    in_gpa: int
    in_size: int
    out_gpa: int
    out_size: int
    reply: Reply | None = None


def _split(gpa: int, size: int, segment: int | None) -> list[tuple[int, int]]:
    if size == 0:
        return []
    if not segment:
        return [(gpa, size)]
    return [(gpa + off, min(segment, size - off)) for off in range(0, size, segment)]


class FuseClient:
    def __init__(self, frontend: VhostUserFrontend, *, queue: int = REQUEST_QUEUE,
                 segment: int | None = None, indirect: bool = False, timeout: float = 30.0):
        self.fe = frontend
        self.queue_index = queue
        self.segment = segment
        self.indirect = indirect
        self.timeout = timeout
        self._unique = itertools.count(2, 2)
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], Pending] = {}  # (queue, head) -> pending
        self.init_out = None

    # -- transport ------------------------------------------------------------------------

    def submit(self, opcode: int, nodeid: int = 0, args: bytes = b"", out_size: int = 0, *,
               data: bytes = b"", uid: int = 0, gid: int = 0, pid: int = 0,
               queue: int | None = None, no_reply: bool = False, raw_len: int | None = None,
               extensions: bytes = b"") -> Pending:
        """Make one request available and kick.  ``out_size``: reply bytes after the out
        header (0 with no_reply: FORGET has no writable part).  ``raw_len`` overrides
        fuse_in_header.len (hostile tests).  ``extensions``: request extensions (7.38+,
        a multiple of 8 bytes) sent after the arguments and counted in total_extlen."""
        q = self.fe.queues[self.queue_index if queue is None else queue]
        unique = next(self._unique)
        body = args + data + extensions
        in_size = abi.fuse_in_header.size + len(body)
        header = abi.fuse_in_header.build(len=in_size if raw_len is None else raw_len, opcode=opcode,
                                          unique=unique, nodeid=nodeid, uid=uid, gid=gid, pid=pid,
                                          total_extlen=len(extensions) // 8)
        in_gpa = self.fe.alloc.alloc(in_size)
        self.fe.ram.write(in_gpa, header + body)
        out_total = 0 if no_reply else abi.fuse_out_header.size + out_size
        out_gpa = self.fe.alloc.alloc(out_total) if out_total else 0
        if out_total:
            # Poison the reply area so a reply that is not written cannot look valid.
            self.fe.ram.write(out_gpa, b"\xa5" * min(out_total, 64))
        try:
            head = q.add(_split(in_gpa, in_size, self.segment),
                         _split(out_gpa, out_total, self.segment), indirect=self.indirect)
        except BaseException:
            self.fe.alloc.free(in_gpa, in_size)
            if out_total:
                self.fe.alloc.free(out_gpa, out_total)
            raise
        p = Pending(unique, q, head, in_gpa, in_size, out_gpa, out_total)
        with self._lock:
            self._pending[(q.index, head)] = p
        q.kick()
        return p

    def _collect(self, q: DriverQueue) -> None:
        while (used := q.get_used()) is not None:
            head, length = used
            with self._lock:
                p = self._pending.pop((q.index, head), None)
            if p is None:
                continue  # a raw chain from a hostile test
            raw = self.fe.ram.read(p.out_gpa, min(length, p.out_size)) if p.out_size else b""
            if len(raw) >= abi.fuse_out_header.size:
                h = abi.fuse_out_header.parse(raw)
                p.reply = Reply(h.unique, h.error, raw[abi.fuse_out_header.size:h.len], length)
            else:
                p.reply = Reply(p.unique, 0, b"", length)
            self.fe.alloc.free(p.in_gpa, p.in_size)
            if p.out_size:
                self.fe.alloc.free(p.out_gpa, p.out_size)

    def reap(self, p: Pending, timeout: float | None = None) -> Reply:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while p.reply is None:
            self._collect(p.queue)
            if p.reply is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to request {p.unique} (head {p.head})")
            p.queue.wait(min(left, 0.5))
        return p.reply

    def call_chain(self, readable: list[tuple[int, int]], writable: list[tuple[int, int]],
                   timeout: float | None = None) -> int:
        """Submit a chain shaped by hand (guest addresses anywhere, even outside RAM: for
        hostile and DAX tests), wait for it and return the used length.  The caller lays
        out and reads the buffers itself."""
        q = self.fe.queues[self.queue_index]
        head = q.add(readable, writable)
        q.kick(force=True)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            used = q.get_used()
            if used is not None:
                if used[0] != head:
                    raise RuntimeError(f"chain {used[0]} came back, expected {head}")
                return used[1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"hand-made chain {head} did not come back")
            q.wait(0.1)

    def call(self, opcode: int, nodeid: int = 0, args: bytes = b"", out_size: int = 0, **kw) -> Reply:
        return self.reap(self.submit(opcode, nodeid, args, out_size, **kw))

    def check(self, opcode: int, nodeid: int = 0, args: bytes = b"", out_size: int = 0, **kw) -> bytes:
        return self.call(opcode, nodeid, args, out_size, **kw).check()

    # -- operations -------------------------------------------------------------------------

    def init(self, minor: int = 38, flags: int = 0, max_readahead: int = 1 << 17):
        value = abi.InitFlags.split(flags | abi.FUSE_INIT_EXT)
        args = abi.fuse_init_in.build(major=7, minor=minor, max_readahead=max_readahead,
                                      flags=value.flags, flags2=value.flags2)
        body = self.check(Opcode.FUSE_INIT, 0, args, abi.fuse_init_out.size)
        self.init_out = abi.fuse_init_out.parse(body.ljust(abi.fuse_init_out.size, b"\0"))
        return self.init_out

    @staticmethod
    def parse_entry(body: bytes):
        head = abi.fuse_entry_out_head.parse(body)
        return head, abi.fuse_attr.parse(body, abi.fuse_entry_out_head.size)

    @staticmethod
    def parse_attr_out(body: bytes):
        return abi.fuse_attr.parse(body, abi.fuse_attr_out_head.size)

    def lookup(self, parent: int, name: bytes, **kw):
        return self.parse_entry(self.check(Opcode.FUSE_LOOKUP, parent, name + b"\0",
                                           abi.FUSE_ENTRY_OUT_SIZE, **kw))

    def forget(self, nodeid: int, nlookup: int = 1) -> None:
        self.reap(self.submit(Opcode.FUSE_FORGET, nodeid, abi.fuse_forget_in.build(nlookup=nlookup),
                              queue=HIPRIO, no_reply=True))

    def batch_forget(self, pairs: list[tuple[int, int]]) -> None:
        """BATCH_FORGET of (nodeid, nlookup) pairs."""
        args = abi.fuse_batch_forget_in.build(count=len(pairs)) + b"".join(
            abi.fuse_forget_one.build(nodeid=n, nlookup=k) for n, k in pairs)
        self.reap(self.submit(Opcode.FUSE_BATCH_FORGET, 0, args, queue=HIPRIO, no_reply=True))

    def getattr(self, nodeid: int, fh: int | None = None, **kw):
        args = abi.fuse_getattr_in.build(getattr_flags=abi.FUSE_GETATTR_FH if fh is not None else 0,
                                         fh=fh or 0)
        return self.parse_attr_out(self.check(Opcode.FUSE_GETATTR, nodeid, args, abi.FUSE_ATTR_OUT_SIZE, **kw))

    def setattr(self, nodeid: int, **fields):
        args = abi.fuse_setattr_in.build(**fields)
        return self.parse_attr_out(self.check(Opcode.FUSE_SETATTR, nodeid, args, abi.FUSE_ATTR_OUT_SIZE))

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, umask: int = 0, **kw):
        args = abi.fuse_mkdir_in.build(mode=mode, umask=umask) + name + b"\0"
        return self.parse_entry(self.check(Opcode.FUSE_MKDIR, parent, args, abi.FUSE_ENTRY_OUT_SIZE, **kw))

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0, umask: int = 0, **kw):
        args = abi.fuse_mknod_in.build(mode=mode, rdev=rdev, umask=umask) + name + b"\0"
        return self.parse_entry(self.check(Opcode.FUSE_MKNOD, parent, args, abi.FUSE_ENTRY_OUT_SIZE, **kw))

    def symlink(self, parent: int, name: bytes, target: bytes, **kw):
        return self.parse_entry(self.check(Opcode.FUSE_SYMLINK, parent, name + b"\0" + target + b"\0",
                                           abi.FUSE_ENTRY_OUT_SIZE, **kw))

    def link(self, nodeid: int, newparent: int, newname: bytes):
        args = abi.fuse_link_in.build(oldnodeid=nodeid) + newname + b"\0"
        return self.parse_entry(self.check(Opcode.FUSE_LINK, newparent, args, abi.FUSE_ENTRY_OUT_SIZE))

    def readlink(self, nodeid: int) -> bytes:
        return self.check(Opcode.FUSE_READLINK, nodeid, b"", 4096)

    def create(self, parent: int, name: bytes, flags: int = os.O_RDWR, mode: int = 0o644,
               umask: int = 0, **kw):
        args = abi.fuse_create_in.build(flags=flags, mode=mode, umask=umask) + name + b"\0"
        body = self.check(Opcode.FUSE_CREATE, parent, args,
                          abi.FUSE_ENTRY_OUT_SIZE + abi.fuse_open_out.size, **kw)
        head, attr = self.parse_entry(body)
        return head, attr, abi.fuse_open_out.parse(body, abi.FUSE_ENTRY_OUT_SIZE)

    def open(self, nodeid: int, flags: int = os.O_RDWR, **kw):
        return abi.fuse_open_out.parse(self.check(Opcode.FUSE_OPEN, nodeid,
                                                  abi.fuse_open_in.build(flags=flags),
                                                  abi.fuse_open_out.size, **kw))

    def opendir(self, nodeid: int):
        return abi.fuse_open_out.parse(self.check(Opcode.FUSE_OPENDIR, nodeid,
                                                  abi.fuse_open_in.build(flags=os.O_RDONLY),
                                                  abi.fuse_open_out.size))

    def read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        return self.check(Opcode.FUSE_READ, nodeid,
                          abi.fuse_read_in.build(fh=fh, offset=offset, size=size), size)

    def write(self, nodeid: int, fh: int, offset: int, data: bytes, **kw) -> int:
        args = abi.fuse_write_in.build(fh=fh, offset=offset, size=len(data))
        return abi.fuse_write_out.parse(self.check(Opcode.FUSE_WRITE, nodeid, args,
                                                   abi.fuse_write_out.size, data=data, **kw)).size

    def release(self, nodeid: int, fh: int, *, dir: bool = False) -> None:
        op = Opcode.FUSE_RELEASEDIR if dir else Opcode.FUSE_RELEASE
        self.check(op, nodeid, abi.fuse_release_in.build(fh=fh))

    def flush(self, nodeid: int, fh: int) -> None:
        self.check(Opcode.FUSE_FLUSH, nodeid, abi.fuse_flush_in.build(fh=fh))

    def fsync(self, nodeid: int, fh: int, datasync: bool = False) -> None:
        self.check(Opcode.FUSE_FSYNC, nodeid,
                   abi.fuse_fsync_in.build(fh=fh, fsync_flags=abi.FUSE_FSYNC_FDATASYNC if datasync else 0))

    def readdir(self, nodeid: int, fh: int, offset: int = 0, size: int = 4096, plus: bool = False):
        """One READDIR(PLUS) reply, parsed: a list of (ino, off, type, name[, entry head, attr])."""
        op = Opcode.FUSE_READDIRPLUS if plus else Opcode.FUSE_READDIR
        body = self.check(op, nodeid, abi.fuse_read_in.build(fh=fh, offset=offset, size=size), size)
        out, pos = [], 0
        while pos < len(body):
            entry = None
            if plus:
                entry = self.parse_entry(body[pos:pos + abi.FUSE_ENTRY_OUT_SIZE])
                pos += abi.FUSE_ENTRY_OUT_SIZE
            d = abi.fuse_dirent.parse(body, pos)
            name = body[pos + abi.fuse_dirent.size:pos + abi.fuse_dirent.size + d.namelen]
            pos += abi.dirent_size(d.namelen)
            out.append((d.ino, d.off, d.type, name) + ((entry,) if plus else ()))
        return out

    def listdir(self, nodeid: int, plus: bool = False, size: int = 4096) -> list:
        fh = self.opendir(nodeid).fh
        try:
            result, offset = [], 0
            while True:
                chunk = self.readdir(nodeid, fh, offset, size, plus)
                if not chunk:
                    return result
                result.extend(chunk)
                offset = chunk[-1][1]
        finally:
            self.release(nodeid, fh, dir=True)

    def unlink(self, parent: int, name: bytes) -> None:
        self.check(Opcode.FUSE_UNLINK, parent, name + b"\0")

    def rmdir(self, parent: int, name: bytes) -> None:
        self.check(Opcode.FUSE_RMDIR, parent, name + b"\0")

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int = 0) -> None:
        if flags:
            args = abi.fuse_rename2_in.build(newdir=newparent, flags=flags)
            self.check(Opcode.FUSE_RENAME2, parent, args + name + b"\0" + newname + b"\0")
        else:
            self.check(Opcode.FUSE_RENAME, parent,
                       abi.fuse_rename_in.build(newdir=newparent) + name + b"\0" + newname + b"\0")

    def statfs(self, nodeid: int = abi.FUSE_ROOT_ID):
        return abi.fuse_kstatfs.parse(self.check(Opcode.FUSE_STATFS, nodeid, b"", abi.fuse_kstatfs.size))

    def setupmapping(self, nodeid: int, foffset: int, length: int, moffset: int,
                     flags: int = abi.FUSE_SETUPMAPPING_FLAG_READ, fh: int = 2**64 - 1) -> None:
        args = abi.fuse_setupmapping_in.build(fh=fh, foffset=foffset, len=length, flags=flags,
                                              moffset=moffset)
        self.check(Opcode.FUSE_SETUPMAPPING, nodeid, args)

    def removemapping(self, ranges: list[tuple[int, int]], nodeid: int = abi.FUSE_ROOT_ID) -> None:
        args = abi.fuse_removemapping_in.build(count=len(ranges)) + b"".join(
            abi.fuse_removemapping_one.build(moffset=m, len=n) for m, n in ranges)
        self.check(Opcode.FUSE_REMOVEMAPPING, nodeid, args)

    def destroy(self) -> None:
        self.check(Opcode.FUSE_DESTROY)
