"""The inode table: nodeids the guest knows, each backed by an ``O_PATH`` fd.

Every inode the guest has looked up is an ``O_PATH|O_NOFOLLOW`` descriptor, keyed by what
identifies a file on the host -- ``(st_dev, st_ino, mnt_id)`` -- so two names (hard links,
or the same file seen again) share one nodeid.  Each entry counts the lookups the guest
holds (FORGET/BATCH_FORGET give them back); at zero the fd is closed.

Nodeids are handed out from a counter and never reused within a session, so a stale nodeid
from a confused guest finds nothing (EBADF) rather than somebody else's file.  The root is
nodeid 1 (FUSE_ROOT_ID) and is never forgotten.

Operations *borrow* an inode for their duration: a FORGET racing with an operation on the
same inode cannot close the fd under it (and let the number be reused for another file).

With file handles (see :mod:`.file_handle`) an inode keeps a handle instead of an fd: the
first borrower reopens it (``opener``), the last one to give it back closes it again, so the
daemon holds fds only for inodes in use right now.

Inodes with an fd of their own are also registered in a C table (``c_table``, the handle
table of cext/hotpath.c keyed by nodeid and by file identity) from which the C hot path
answers GETATTR, and LOOKUP of names that resolve to them, without Python.  The C entry
then owns the fd: it is removed from the table when the guest forgets the inode and closed
by whichever of Python and a C GETATTR lets go of it last.  A C LOOKUP counts its lookup
in the entry; FORGET settles that count with ours (``pvfs_fh_settle``) under the C table's
lock, so a nodeid C hands out is never one being dropped.
"""
from __future__ import annotations

import errno
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import structlog

from pyvirtiofsd._cext import ffi, lib
from pyvirtiofsd.fuse.abi import FUSE_ROOT_ID

log = structlog.get_logger()

InodeKey = tuple[int, int, int]
"""(st_dev, st_ino, mnt_id)"""


@dataclass(eq=False, slots=True)
class Inode:
    nodeid: int
    fd: int
    key: InodeKey
    mode: int
    """``st_mode`` at lookup time; only the file type bits are relied upon."""
    lookups: int
    users: int = 0
    dead: bool = False
    """Forgotten while borrowed: close the fd when the last user returns it."""
    handle: Any = None
    """A :class:`~.file_handle.FileHandle`: ``fd`` is then open only while borrowed (-1
    otherwise)."""
    c: Any = None
    """The C table's entry, which then owns ``fd`` (see the module docstring)."""


class InodeTable:
    def __init__(self, root_fd: int, root_key: InodeKey, root_mode: int,
                 opener: Callable[[Inode], int] | None = None):
        self._lock = threading.Lock()
        self._opener = opener
        self._by_id: dict[int, Inode] = {}
        self._by_key: dict[InodeKey, Inode] = {}
        self._c = ffi.gc(lib.pvfs_fhtab_new(), lib.pvfs_fhtab_unref)
        self._info = ffi.new("struct pvfs_inode_info *")
        self.root = Inode(FUSE_ROOT_ID, root_fd, root_key, root_mode, lookups=1)
        self._register(self.root)
        self._by_id[FUSE_ROOT_ID] = self.root
        self._by_key[root_key] = self.root

    @property
    def c_table(self):
        """The C table (``struct pvfs_fhtab *``, nodeid -> fd) the hot path reads."""
        return self._c

    def _register(self, inode: Inode) -> bool:
        dev, ino, mnt_id = inode.key
        entry = lib.pvfs_fhtab_add_inode(self._c, inode.nodeid, inode.fd, dev, ino, mnt_id,
                                         inode.mode)
        if entry != ffi.NULL:
            inode.c = entry
        return entry != ffi.NULL

    def _adopt(self, nodeid: int = 0, key: InodeKey | None = None) -> Inode | None:
        """An inode a C LOOKUP opened and registered that we have not met yet (by nodeid or
        by identity), now ours: its lookups are all in the C entry's count.  Call with the
        lock held."""
        info = self._info
        entry = lib.pvfs_fhtab_adopt(self._c, nodeid,
                                     ffi.new("uint64_t[3]", key) if key else ffi.NULL, info)
        if entry == ffi.NULL:
            return None
        inode = Inode(info.nodeid, info.fd, (info.dev, info.ino, info.mnt_id), info.mode,
                      lookups=0, c=entry)
        self._by_id[inode.nodeid] = inode
        self._by_key[inode.key] = inode
        return inode

    def _get(self, nodeid: int) -> Inode | None:
        """The inode ``nodeid``, adopting it from C if need be.  Call with the lock held."""
        inode = self._by_id.get(nodeid)
        return inode if inode is not None else self._adopt(nodeid)

    def _find(self, key: InodeKey) -> Inode | None:
        inode = self._by_key.get(key)
        return inode if inode is not None else self._adopt(key=key)

    def _close(self, inode: Inode, fd: int) -> None:
        """Close an inode's fd (through its C entry if it has one, which owns it: a C
        GETATTR may still be using it).  Call without the lock."""
        if inode.c is not None:
            entry, inode.c = inode.c, None
            lib.pvfs_fh_close(entry)
        else:
            os.close(fd)

    def close_root(self) -> None:
        """End of the file system: the root's fd goes too."""
        lib.pvfs_fhtab_purge_unadopted(self._c)
        lib.pvfs_fhtab_remove(self._c, FUSE_ROOT_ID)
        self._close(self.root, self.root.fd)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id) + lib.pvfs_fhtab_unadopted(self._c)

    @contextmanager
    def borrow(self, nodeid: int) -> Iterator[Inode]:
        """The live inode ``nodeid`` for the duration of the ``with`` block; EBADF if the
        guest names one we do not have."""
        with self._lock:
            inode = self._get(nodeid)
            if inode is None:
                raise OSError(errno.EBADF, "unknown nodeid", nodeid)
            inode.users += 1
            reopen = inode.fd < 0
        if reopen:
            self._reopen(inode)
        try:
            yield inode
        finally:
            self._unborrow(inode)

    def _reopen(self, inode: Inode) -> None:
        """Give a handle-only inode an fd for its borrowers (two racing borrowers may both
        open one; the loser closes its own)."""
        try:
            fd = self._opener(inode) if self._opener is not None else -1
            if fd < 0:
                raise OSError(errno.ESTALE, "inode has neither fd nor opener", inode.nodeid)
        except BaseException:
            self._unborrow(inode)
            raise
        with self._lock:
            if inode.fd < 0:
                inode.fd, fd = fd, -1
        if fd >= 0:
            os.close(fd)

    def _unborrow(self, inode: Inode) -> None:
        close = -1
        with self._lock:
            inode.users -= 1
            if inode.users == 0 and (inode.dead or inode.handle is not None):
                close, inode.fd = inode.fd, -1
        if close >= 0:
            self._close(inode, close)

    def open_fds(self) -> int:
        """How many inode fds are open now (for tests and statistics)."""
        with self._lock:
            return (sum(1 for i in self._by_id.values() if i.fd >= 0)
                    + lib.pvfs_fhtab_unadopted(self._c))

    def lookup_count(self, nodeid: int) -> int:
        """Lookups the guest holds on ``nodeid`` (0 when unknown).  For tests and logs."""
        with self._lock:
            inode = self._get(nodeid)
            if inode is None:
                return 0
            if inode.c is not None:
                return inode.lookups + lib.pvfs_fh_pending(self._c, inode.c)
            return inode.lookups

    def add_lookup(self, fd: int, key: InodeKey, mode: int, handle: Any = None) -> Inode:
        """Count one lookup of the file ``fd`` refers to.  Takes ownership of ``fd``: it
        becomes the inode's fd, or is closed when the file already has a nodeid -- or
        when ``handle`` is given, which the inode then keeps instead."""
        with self._lock:
            inode = self._find(key)
            if inode is not None:
                inode.lookups += 1
            else:
                inode = Inode(lib.pvfs_fhtab_new_id(self._c), fd if handle is None else -1,
                              key, mode, lookups=1, handle=handle)
                found = None
                if handle is None and not self._register(inode):
                    # a C LOOKUP registered the same file meanwhile (or memory is short)
                    found = self._adopt(key=key)
                if found is not None:
                    found.lookups += 1
                    inode = found
                else:
                    self._by_id[inode.nodeid] = inode
                    self._by_key[key] = inode
                    if handle is None:
                        return inode       # fd is the inode's now
        os.close(fd)
        return inode

    def add_existing(self, inode: Inode) -> None:
        """One more lookup of an inode the caller has borrowed (LOOKUP of ``.``)."""
        with self._lock:
            inode.lookups += 1

    def find(self, key: InodeKey) -> Inode | None:
        with self._lock:
            return self._find(key)

    def forget(self, nodeid: int, nlookup: int) -> None:
        """The guest gave back ``nlookup`` lookups.  Unknown nodeids are ignored (the
        guest cannot be told: FORGET has no reply)."""
        close = None
        with self._lock:
            inode = self._get(nodeid)
            if inode is None or inode is self.root:
                return
            if inode.c is not None:
                # with the lookups C LOOKUPs counted; at 0 C has dropped the entry already
                inode.lookups = lib.pvfs_fh_settle(self._c, inode.c, inode.lookups, nlookup)
            else:
                inode.lookups = max(0, inode.lookups - nlookup)
            if inode.lookups == 0:
                del self._by_id[nodeid]
                lib.pvfs_fhtab_remove(self._c, nodeid)
                if self._by_key.get(inode.key) is inode:
                    del self._by_key[inode.key]
                if inode.users == 0:
                    close = inode.fd
                else:
                    inode.dead = True
        if close is not None and close >= 0:
            self._close(inode, close)

    def clear(self) -> None:
        """Forget everything but the root (end of session)."""
        with self._lock:
            doomed = [i for i in self._by_id.values() if i is not self.root]
            self._by_id = {FUSE_ROOT_ID: self.root}
            self._by_key = {self.root.key: self.root}
            to_close = []
            lib.pvfs_fhtab_purge_unadopted(self._c)
            for inode in doomed:
                lib.pvfs_fhtab_remove(self._c, inode.nodeid)
                if inode.users == 0:
                    if inode.fd >= 0:
                        to_close.append(inode)
                else:
                    inode.dead = True
        for inode in to_close:
            self._close(inode, inode.fd)
