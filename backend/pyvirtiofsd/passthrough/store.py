"""The Python face of the C store (cext/store.c): the inodes the guest knows and the files
it has open.

C owns every piece of this state -- nodeids, the (st_dev, st_ino, mnt_id) index, lookup
counts, the O_PATH fds or file handles, the open handles -- and the C hot path reads and
changes it directly; Python keeps no copy.  Operations *borrow* an inode or a handle for
as long as they use its fd (``with inodes.borrow(nodeid) as i``): a FORGET or RELEASE
racing with them takes the entry out of the store, but its fd stays open until the last
borrower is done, so it is never closed under a syscall, nor its number reused by another
open meanwhile.

Nodeids and fh numbers come from counters and are never reused within a store's life: a
stale number from a confused guest finds nothing (EBADF).  The root is nodeid 1
(FUSE_ROOT_ID) and is never forgotten.

With file handles (``--inode-file-handles``, see :mod:`.file_handle`) an inode keeps a
handle instead of an fd: its first borrower opens it and the last one to give it back
closes it, so the daemon holds fds only for inodes in use right now.  C makes, keeps and
opens the handles (cext/store.h, "File handles"), for the hot path and Python alike.
"""
from __future__ import annotations

import errno
import os
import struct
from contextlib import contextmanager
from typing import Any, Iterator

from pyvirtiofsd._cext import ffi, lib
from pyvirtiofsd.fuse.abi import FUSE_ROOT_ID
from pyvirtiofsd.passthrough.file_handle import FileHandle

InodeKey = tuple[int, int, int]
"""(st_dev, st_ino, mnt_id)"""

_HANDLE_HEAD = struct.Struct("<Qi")   # how a FileHandle is kept in C: mount_id, type, bytes
_HANDLE_MODES = ("never", "prefer", "mandatory")   # PVFS_HANDLES_*


def _unpack_handle(data: bytes) -> FileHandle:
    mount_id, htype = _HANDLE_HEAD.unpack_from(data)
    return FileHandle(mount_id, htype, data[_HANDLE_HEAD.size:])


class Inode:
    """A borrowed inode, as the store gave it (valid inside its ``borrow`` block)."""

    __slots__ = ("nodeid", "fd", "mode", "key", "_c")

    def __init__(self, nodeid: int, fd: int, mode: int, key: InodeKey, c: Any = None):
        self.nodeid = nodeid
        self.fd = fd
        self.mode = mode
        """``st_mode`` at lookup time; only the file type bits are relied upon."""
        self.key = key
        self._c = c

    @property
    def is_root(self) -> bool:
        return self.nodeid == FUSE_ROOT_ID


class Handle:
    """A borrowed open file (valid until given back)."""

    __slots__ = ("fh", "fd", "nodeid", "_c")

    def __init__(self, fh: int, fd: int, nodeid: int, c: Any):
        self.fh = fh
        self.fd = fd
        self.nodeid = nodeid
        self._c = c

    @property
    def lock(self) -> "_HandleLock":
        """Serialises users of the fd's file position (readdir's seek + getdents)."""
        return _HandleLock(self._c)


class _HandleLock:
    __slots__ = ("_c",)

    def __init__(self, c: Any):
        self._c = c

    def acquire(self) -> None:
        lib.pvfs_handle_lock(self._c)     # the GIL is released while it waits

    def release(self) -> None:
        lib.pvfs_handle_unlock(self._c)

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Store:
    """The store of one passthrough file system: ``root_fd`` (an O_PATH fd of the shared
    directory, now the store's) is nodeid 1.  Inodes keep fds until
    :meth:`set_file_handles` says otherwise."""

    def __init__(self, root_fd: int, root_key: InodeKey, root_mode: int):
        c = lib.pvfs_store_new(root_fd, *root_key, root_mode)
        if c == ffi.NULL:
            raise MemoryError("cannot allocate the inode store")
        self.c = ffi.gc(c, lib.pvfs_store_unref)
        self._closed = False
        self.root_fd = root_fd
        self.inodes = Inodes(self)
        self.handles = Handles(self)

    def set_file_handles(self, mode: str, idle_fds: int = 0) -> None:
        """``never`` | ``prefer`` | ``mandatory`` (once, before serving): whether new inodes
        keep a file handle instead of their fd.  ``idle_fds``: how many of those nobody
        borrows keep their fd open anyway, the ones used last.  OSError if the root's file
        system makes no handles."""
        rc = lib.pvfs_store_set_file_handles(self.c, _HANDLE_MODES.index(mode), idle_fds)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc), "file handles of the shared directory")

    def make_handle(self, fd: int, mode: int) -> FileHandle | None:
        """The handle a new inode for ``fd`` (file type from ``mode``) keeps instead of the fd;
        None: it keeps the fd.  OSError under ``mandatory`` when there is no handle."""
        out = ffi.new("uint8_t[]", lib.PVFS_HANDLE_ROOM)
        n = lib.pvfs_store_make_handle(self.c, fd, mode, out)
        if n < 0:
            raise OSError(-n, f"no file handle (--inode-file-handles=mandatory): "
                              f"{os.strerror(-n)}")
        return _unpack_handle(ffi.buffer(out, n)[:]) if n else None

    def mounts(self) -> int:
        """How many mounts the store keeps a directory fd for (to open handles with)."""
        return lib.pvfs_store_mounts(self.c)

    def set_policy(self, *, switch_ids: bool, posix_acl: bool, writeback: bool,
                   direct_io: bool, noatime: bool) -> None:
        """What the file system does that C, serving metadata from the store, must do
        alike: its options and what INIT negotiated (cext/store.h, PVFS_FS_*)."""
        flags = ((lib.PVFS_FS_SWITCH_IDS if switch_ids else 0)
                 | (lib.PVFS_FS_POSIX_ACL if posix_acl else 0)
                 | (lib.PVFS_FS_WRITEBACK if writeback else 0)
                 | (lib.PVFS_FS_DIRECT_IO if direct_io else 0)
                 | (lib.PVFS_FS_NOATIME if noatime else 0))
        lib.pvfs_store_set_policy(self.c, flags)

    def set_proc(self, proc_fd: int) -> None:
        """The ``/proc/self/fd`` directory C reopens files through (the store dups it)."""
        rc = lib.pvfs_store_set_proc(self.c, proc_fd)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc), "the store's /proc/self/fd")

    def clear(self) -> None:
        """DESTROY: every handle and every inode but the root leave the store."""
        lib.pvfs_store_clear(self.c)

    def close(self) -> None:
        """The end of the file system: every fd the store holds is closed (borrowed ones as
        their borrowers finish)."""
        if not self._closed:
            self._closed = True
            lib.pvfs_store_close(self.c)   # now, though a hot path may hold a reference

    # -- migration (pyvirtiofsd.migration) ---------------------------------------------

    def next_ids(self) -> tuple[int, int]:
        """(the next new nodeid, the next new fh)."""
        n, f = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        lib.pvfs_store_next_ids(self.c, n, f)
        return n[0], f[0]

    def raise_next_ids(self, next_nodeid: int, next_fh: int) -> None:
        """Make the counters at least these (a destination goes on numbering where the
        source stopped)."""
        lib.pvfs_store_raise_next_ids(self.c, next_nodeid, next_fh)

    def counts(self) -> tuple[int, int, int]:
        """(inodes, inode fds open now, handles)."""
        out = ffi.new("struct pvfs_store_counts *")
        lib.pvfs_store_counts(self.c, out)
        return out.inodes, out.inode_fds, out.handles


class Inodes:
    """The inode half of a :class:`Store`."""

    def __init__(self, store: Store):
        self._s = store

    @property
    def root(self) -> Inode:
        """The root (never forgotten, so its fd is stable for the store's life)."""
        s = self._s
        v = ffi.new("struct pvfs_inode_view *")
        i = lib.pvfs_inode_get(s.c, FUSE_ROOT_ID, v)
        if i == ffi.NULL:
            raise OSError(errno.EBADF, "the store has no root")
        lib.pvfs_inode_put(s.c, i)
        return Inode(FUSE_ROOT_ID, v.fd, v.mode, (v.dev, v.ino, v.mnt_id))

    def __len__(self) -> int:
        return self._s.counts()[0]

    def open_fds(self) -> int:
        """How many inode fds are open now (for tests and statistics)."""
        return self._s.counts()[1]

    @contextmanager
    def borrow(self, nodeid: int) -> Iterator[Inode]:
        """The live inode ``nodeid`` for the ``with`` block; EBADF if the guest names one
        the store does not hold."""
        c = self._s.c
        v = ffi.new("struct pvfs_inode_view *")
        e = lib.pvfs_inode_get(c, nodeid, v)
        if e == ffi.NULL:
            raise OSError(errno.EBADF, "unknown nodeid", nodeid)
        try:
            fd = v.fd
            if fd < 0:
                fd = self._reopen(e, v)
            yield Inode(v.nodeid, fd, v.mode, (v.dev, v.ino, v.mnt_id), e)
        finally:
            lib.pvfs_inode_put(c, e)

    def _reopen(self, e: Any, v: Any) -> int:
        """An fd for a file-handle inode's borrowers (the store opens its handle)."""
        fd = lib.pvfs_store_open_inode(self._s.c, e)
        if fd == -errno.EIO:
            # inserted by a migration that could not find the file again (on-error=guest-error)
            raise OSError(errno.EIO, "inode lost in migration", v.nodeid)
        if fd < 0:
            raise OSError(-fd, os.strerror(-fd), f"inode {v.nodeid}")
        return fd

    def add_lookup(self, fd: int, key: InodeKey, mode: int,
                   handle: FileHandle | None = None) -> int:
        """Count one lookup of the file ``fd`` refers to: its nodeid.  Takes ``fd``: it
        becomes the inode's, or is closed when the file has a nodeid already -- or when
        ``handle`` is given, which a new inode keeps instead."""
        if handle is None:
            nodeid = lib.pvfs_store_lookup(self._s.c, fd, *key, mode, ffi.NULL, 0)
        else:
            raw = _HANDLE_HEAD.pack(handle.mount_id, handle.type) + handle.data
            nodeid = lib.pvfs_store_lookup(self._s.c, fd, *key, mode, raw, len(raw))
        if nodeid == 0:
            raise OSError(errno.ENOMEM, "cannot register an inode")
        return nodeid

    def add_existing(self, inode: Inode) -> None:
        """One more lookup of an inode the caller has borrowed (LOOKUP of ``.``)."""
        lib.pvfs_inode_add_lookup(self._s.c, inode._c)

    def find(self, key: InodeKey) -> int:
        """The nodeid of the file with this identity if the guest holds it, else 0."""
        return lib.pvfs_store_find(self._s.c, *key)

    def forget(self, nodeid: int, nlookup: int) -> None:
        """The guest gave back ``nlookup`` lookups (unknown nodeids are ignored: FORGET has
        no reply)."""
        lib.pvfs_store_forget(self._s.c, nodeid, nlookup)

    def forget_many(self, requests: list[tuple[int, int]]) -> None:
        flat = [n for pair in requests for n in pair]
        lib.pvfs_store_forget_many(self._s.c, ffi.new("uint64_t[]", flat), len(requests))

    def lookup_count(self, nodeid: int) -> int:
        """Lookups the guest holds on ``nodeid`` (0 when unknown)."""
        return lib.pvfs_store_lookups(self._s.c, nodeid)

    def list(self) -> list[tuple[int, int]]:
        """(nodeid, lookups) of every inode but the root (migration)."""
        return _pairs(lib.pvfs_store_list_inodes, self._s.c)

    def insert(self, nodeid: int, lookups: int, fd: int, key: InodeKey, mode: int,
               handle: FileHandle | None = None) -> None:
        """Put inode ``nodeid`` back with ``lookups`` lookups (migration).  Takes ``fd``
        (kept, or closed when ``handle`` is kept instead).  ``fd`` -1 and no handle: an
        inode lost in migration, whose borrowers get EIO.  EEXIST if the nodeid or the
        file is held already, EINVAL for the root or no lookups."""
        raw = b"" if handle is None else _HANDLE_HEAD.pack(handle.mount_id, handle.type) + handle.data
        rc = lib.pvfs_store_insert_inode(self._s.c, nodeid, lookups, fd, *key, mode,
                                         raw if raw else ffi.NULL, len(raw))
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc), f"inode {nodeid}")


class Handles:
    """The open-file half of a :class:`Store`."""

    def __init__(self, store: Store):
        self._s = store

    def __len__(self) -> int:
        return self._s.counts()[2]

    def add(self, fd: int, nodeid: int) -> int:
        """A new fh for ``fd`` (now the store's) opened on ``nodeid``."""
        fh = lib.pvfs_store_open(self._s.c, fd, nodeid)
        if fh == 0:
            raise OSError(errno.ENOMEM, "cannot register an open file")
        return fh

    def acquire(self, fh: int) -> Handle:
        """Borrow handle ``fh`` until :meth:`unborrow`; EBADF if unknown."""
        fd, nodeid = ffi.new("int *"), ffi.new("uint64_t *")
        c = lib.pvfs_handle_get(self._s.c, fh, fd, nodeid)
        if c == ffi.NULL:
            raise OSError(errno.EBADF, "unknown file handle", fh)
        if fd[0] < 0:
            lib.pvfs_handle_put(c)
            raise OSError(errno.EIO, "file handle lost in migration", fh)
        return Handle(fh, fd[0], nodeid[0], c)

    def unborrow(self, h: Handle) -> None:
        c, h._c = h._c, None
        if c is not None:
            lib.pvfs_handle_put(c)

    @contextmanager
    def borrow(self, fh: int) -> Iterator[Handle]:
        h = self.acquire(fh)
        try:
            yield h
        finally:
            self.unborrow(h)

    def list(self) -> list[tuple[int, int]]:
        """(fh, nodeid) of every open handle (migration)."""
        return _pairs(lib.pvfs_store_list_handles, self._s.c)

    def insert(self, fh: int, fd: int, nodeid: int) -> None:
        """Put handle ``fh`` back (migration); takes ``fd``.  ``fd`` -1: a handle lost in
        migration (its users get EIO; RELEASE removes it)."""
        rc = lib.pvfs_store_insert_handle(self._s.c, fh, fd, nodeid)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc), f"handle {fh}")

    def remove(self, fh: int) -> None:
        """RELEASE: drop ``fh``; its fd closes when the last borrower is done."""
        if lib.pvfs_store_release(self._s.c, fh) < 0:
            raise OSError(errno.EBADF, "unknown file handle", fh)


def _pairs(list_fn: Any, c: Any) -> list[tuple[int, int]]:
    room = 64
    while True:
        out = ffi.new("uint64_t[]", 2 * room)
        n = list_fn(c, out, room)
        if n <= room:
            return [(out[2 * k], out[2 * k + 1]) for k in range(n)]
        room = n + 64        # the store grew meanwhile: ask again
