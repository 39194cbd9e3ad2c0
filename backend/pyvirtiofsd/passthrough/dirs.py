"""PassthroughFs's operations on directories: OPENDIR, READDIR (a getdents64 stream),
READDIRPLUS records packed in C, FSYNCDIR, RELEASEDIR."""
from __future__ import annotations

import errno
import os
import stat
from typing import Iterator

from pyvirtiofsd._cext import ffi, lib
from pyvirtiofsd.filesystem import DIRPLUS_END, DIRPLUS_FULL, DIRPLUS_PYTHON, Context, DirEntry, Opened
from pyvirtiofsd.passthrough import syscalls
from pyvirtiofsd.passthrough.common import PassthroughBase, err
from pyvirtiofsd.passthrough.store import Handle, Handles
from pyvirtiofsd.passthrough.names import NameOps

DIRPLUS_BUFFER = lib.PVFS_DIRPLUS_ROOM   # the most one reply carries (C's too)
"""The most READDIRPLUS records packed in C per request: a reply may be shorter than the
guest's buffer (it asks again from the next offset), and this bounds the memory one request
can take, whatever size the guest claims."""

# the C side's stop reasons are the server's
assert (lib.PVFS_DIRPLUS_END, lib.PVFS_DIRPLUS_FULL, lib.PVFS_DIRPLUS_PYTHON) == \
    (DIRPLUS_END, DIRPLUS_FULL, DIRPLUS_PYTHON)


class DirOps(PassthroughBase):
    """Mixed into :class:`~pyvirtiofsd.passthrough.PassthroughFs`."""

    def opendir(self, ctx: Context, inode: int, flags: int) -> Opened:
        with self.inodes.borrow(inode) as i:
            if not stat.S_ISDIR(i.mode):
                raise err(errno.ENOTDIR)
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=i.fd)
            return Opened(self.handles.add(fd, i.nodeid))

    def readdir(self, ctx: Context, inode: int, fh: int, offset: int) -> "_DirStream":
        return _DirStream(self.handles, self.handles.acquire(fh), offset)

    def readdirplus_records(self, ctx: Context, inode: int, fh: int, offset: int, room: int,
                            blksize: int, timeout: float) -> tuple[bytes, int, int]:
        """READDIRPLUS records packed in C (see :meth:`FileSystem.readdir`): getdents64,
        then per entry statx and the store -- new inodes opened and registered there too
        unless inodes keep file handles, which only :meth:`lookup` makes."""
        if type(self).lookup is not NameOps.lookup or room <= 0:   # lookup overridden
            return b"", offset, DIRPLUS_PYTHON
        with self.handles.borrow(fh) as h, h.lock, self.inodes.borrow(inode) as p:
            room = min(room, DIRPLUS_BUFFER)   # a shorter reply is fine: the guest asks again
            buf = ffi.new("uint8_t[]", room)
            nxt, why = ffi.new("uint64_t *"), ffi.new("int *")
            whole = int(timeout)
            n = lib.pvfs_dirplus(self.store.c, h.fd, p.fd, p.key[2], offset, buf, room, blksize,
                                 whole, int((timeout - whole) * 1e9), nxt, why)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return ffi.buffer(buf, n)[:], nxt[0], why[0]

    def releasedir(self, ctx: Context, inode: int, fh: int, flags: int) -> None:
        self.handles.remove(fh)

    def fsyncdir(self, ctx: Context, inode: int, fh: int, datasync: bool) -> None:
        self.fsync(ctx, inode, fh, datasync)


_GETDENTS_BUFSIZE = 8192   # twice a READDIR(PLUS) reply's worth of short names


class _DirStream:
    """Directory entries from ``offset`` on, read in getdents64 batches.

    Holds the handle (borrowed, and its position lock) until closed: the server closes it
    when the guest's buffer is full.  Seeking to the previous entry's ``d_off`` cookie and
    reading on is how a FUSE readdir continues.
    """

    def __init__(self, table: Handles, handle: Handle, offset: int):
        self._table = table
        self._handle: Handle | None = handle
        self._batch: Iterator[syscalls.Dirent64] = iter(())
        handle.lock.acquire()
        try:
            os.lseek(handle.fd, offset, os.SEEK_SET)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> "_DirStream":
        return self

    def __next__(self) -> DirEntry:
        h = self._handle
        if h is None:
            raise StopIteration
        for _ in range(2):
            for d in self._batch:
                return DirEntry(d.ino, d.off, d.type, d.name)
            # Parsed lazily: a reply takes a few dozen entries of the batch, and the next
            # request seeks again, so parsing the whole batch would be mostly wasted.
            self._batch = syscalls.getdents64(h.fd, _GETDENTS_BUFSIZE)
        self.close()
        raise StopIteration

    def close(self) -> None:
        h, self._handle = self._handle, None
        if h is not None:
            h.lock.release()
            self._table.unborrow(h)

    def __del__(self) -> None:
        self.close()
