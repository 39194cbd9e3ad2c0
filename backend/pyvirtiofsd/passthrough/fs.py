"""PassthroughFs: serve a host directory, the way virtiofsd does.

Security model in one paragraph: the guest only ever names files by (inode, one name
component).  Every host call is an ``*at()`` call relative to an inode's ``O_PATH`` fd, and
LOOKUP opens a child with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` plus
``O_PATH|O_NOFOLLOW``, so no name, ``..`` or symlink resolves outside the shared directory
and a symlink is never followed by the daemon (it becomes an inode of its own; the guest
reads its target with READLINK and resolves it inside the guest).  Opening a file for I/O
re-opens the inode through ``/proc/self/fd/N`` -- only for regular files and directories,
never a symlink, FIFO or device node (a guest could otherwise create a device node and
open a host device through it).

``..`` in LOOKUP: at the root it is the root itself (a chroot's rule); elsewhere it is the
parent directory only if the guest already holds that directory (it came down through it),
otherwise EXDEV -- the daemon never hands out an inode above the shared directory.  The
Linux guest resolves ``..`` itself and never sends it; only NFS-export style clients would.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import os
import stat
from typing import Any, Callable, Iterator, TypeVar

import structlog

from pyvirtiofsd.filesystem import (
    Attr, Context, DirEntry, Entry, FileRange, FileSystem, Opened, SetAttr, StatFs, Statx,
    WriteData,
)
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.passthrough import syscalls
from pyvirtiofsd.passthrough.credentials import Credentials
from pyvirtiofsd.passthrough.handles import Handle, HandleTable
from pyvirtiofsd.passthrough.inodes import Inode, InodeKey, InodeTable

log = structlog.get_logger()
T = TypeVar("T")

NAME_MAX = 255
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_MAGICLINKS
_STAT_EMPTY = syscalls.AT_EMPTY_PATH | syscalls.AT_SYMLINK_NOFOLLOW
# Open flags a guest may not pass through to the host reopen: creation is done by
# create/tmpfile, O_NOFOLLOW would refuse the /proc magic link, O_PATH is guest-local.
_STRIP_OPEN = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_PATH


def _err(code: int, *what: object) -> OSError:
    return OSError(code, os.strerror(code), *what)


def _check_name(name: bytes, creating: bool = True) -> None:
    """One path component that names a real entry: refused before any syscall sees it."""
    if not name or b"/" in name or b"\0" in name:
        raise _err(errno.EINVAL, name)
    if len(name) > NAME_MAX:
        raise _err(errno.ENAMETOOLONG, name)
    if creating and name in (b".", b".."):
        raise _err(errno.EINVAL, name)


def _modifies(method: Callable[..., T]) -> Callable[..., T]:
    """Refuse the operation with EROFS on a read-only file system."""
    @functools.wraps(method)
    def guarded(self: "PassthroughFs", *args: Any, **kwargs: Any) -> T:
        if self.readonly:
            raise _err(errno.EROFS)
        return method(self, *args, **kwargs)
    return guarded


def _xattr_op(method: Callable[..., T]) -> Callable[..., T]:
    """ENOSYS unless xattrs are enabled: the guest then stops asking."""
    @functools.wraps(method)
    def guarded(self: "PassthroughFs", *args: Any, **kwargs: Any) -> T:
        if not self.xattr:
            raise _err(errno.ENOSYS)
        return method(self, *args, **kwargs)
    return guarded


def _key(stx) -> InodeKey:
    return (os.makedev(stx.dev_major, stx.dev_minor), stx.ino, stx.mnt_id)


def _attr_from_statx(stx) -> Attr:
    return Attr(
        ino=stx.ino, size=stx.size, blocks=stx.blocks,
        atime=stx.atime_sec, mtime=stx.mtime_sec, ctime=stx.ctime_sec,
        atimensec=stx.atime_nsec, mtimensec=stx.mtime_nsec, ctimensec=stx.ctime_nsec,
        mode=stx.mode, nlink=stx.nlink, uid=stx.uid, gid=stx.gid,
        rdev=os.makedev(stx.rdev_major, stx.rdev_minor), blksize=stx.blksize,
    )


class PassthroughFs(FileSystem):
    """Serve the host directory ``root``.

    ``allow_direct_io``: honour O_DIRECT from the guest (virtiofsd's ``--allow-direct-io``;
    off by default: O_DIRECT is dropped because the guest's alignment need not suit the
    host file system).
    ``switch_credentials``: create files with the caller's fsuid/fsgid; default: when the
    daemon runs as root.
    ``readonly``: refuse every modification with EROFS (the server refuses them too when
    its own ``readonly`` option is set; this keeps the file system safe under any server).
    ``xattr``: serve extended attributes; off → ENOSYS, as virtiofsd without ``--xattr``.
    ``proc_self_fd``: where the process's ``/proc/self/fd`` directory is (a chroot sandbox
    leaves it in the working directory: ``"."``; see :mod:`pyvirtiofsd.sandbox`).
    """

    def __init__(self, root: str | os.PathLike[str], *, allow_direct_io: bool = False,
                 switch_credentials: bool | None = None, readonly: bool = False,
                 xattr: bool = False, proc_self_fd: str = "/proc/self/fd"):
        self.root_path = os.fspath(root)
        self.allow_direct_io = allow_direct_io
        self.readonly = readonly
        self.xattr = xattr
        self.writeback = False
        self.proc_self_fd = proc_self_fd
        self.credentials = Credentials(switch_credentials)
        root_fd = os.open(self.root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            stx = syscalls.statx(root_fd, b"", _STAT_EMPTY, syscalls.STATX_BASIC_STATS)
            self._proc_fd = os.open(proc_self_fd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.close(root_fd)
            raise
        self.inodes = InodeTable(root_fd, _key(stx), stx.mode)
        self.handles = HandleTable()

    def close(self) -> None:
        """Release every fd (the object is unusable afterwards)."""
        self.destroy()
        os.close(self.inodes.root.fd)
        os.close(self._proc_fd)

    # --- lifecycle ------------------------------------------------------------------------

    def init(self, flags: int) -> int:
        # With a guest write-back cache the guest may READ through a handle the application
        # opened write-only, and computes append offsets itself (see _open_flags).
        self.writeback = bool(flags & abi.FUSE_WRITEBACK_CACHE)
        return flags

    def destroy(self) -> None:
        self.handles.clear()
        self.inodes.clear()

    # --- helpers ----------------------------------------------------------------------------

    def _proc_name(self, fd: int) -> str:
        return str(fd)

    def _entry_for(self, fd: int) -> Entry:
        """Count a lookup of the file behind O_PATH ``fd`` (taking ownership of ``fd``)."""
        try:
            stx = syscalls.statx(fd, b"", _STAT_EMPTY,
                                 syscalls.STATX_BASIC_STATS | syscalls.STATX_MNT_ID)
        except BaseException:
            os.close(fd)
            raise
        inode = self.inodes.add_lookup(fd, _key(stx), stx.mode)
        return Entry(inode.nodeid, 0, _attr_from_statx(stx))

    def _lookup_child(self, parent: Inode, name: bytes) -> Entry:
        fd = syscalls.openat2(parent.fd, name, _PATH_FLAGS, _RESOLVE)
        return self._entry_for(fd)

    def _path_fd_of(self, fd: int) -> int:
        """An O_PATH fd for the very file ``fd`` is open on (no name lookup involved)."""
        return os.open(self._proc_name(fd), os.O_PATH | os.O_CLOEXEC, dir_fd=self._proc_fd)

    def _open_flags(self, flags: int) -> int:
        flags = (flags & ~_STRIP_OPEN) | os.O_CLOEXEC
        if not self.allow_direct_io:
            flags &= ~os.O_DIRECT
        if self.writeback:
            # The guest page cache reads around partial writes: a write-only fd would fail.
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            # The guest kernel computes O_APPEND offsets from its cached size; a host-side
            # O_APPEND would put the data elsewhere than the guest believes.
            flags &= ~os.O_APPEND
        return flags

    def _reopen(self, inode: Inode, flags: int) -> int:
        """Open an inode for I/O through /proc/self/fd -- regular files and dirs only."""
        if stat.S_ISLNK(inode.mode):
            raise _err(errno.ELOOP)
        if not (stat.S_ISREG(inode.mode) or stat.S_ISDIR(inode.mode)):
            raise _err(errno.EACCES)
        return os.open(self._proc_name(inode.fd), flags, dir_fd=self._proc_fd)

    # --- names and inodes ---------------------------------------------------------------

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        _check_name(name, creating=False)
        with self.inodes.borrow(parent) as p:
            if name == b"." or (name == b".." and p is self.inodes.root):
                self.inodes.add_existing(p)
                return Entry(p.nodeid, 0, Attr.from_stat(os.fstat(p.fd)))
            if name == b"..":
                return self._lookup_dotdot(p)
            return self._lookup_child(p, name)

    def _lookup_dotdot(self, p: Inode) -> Entry:
        fd = os.open("..", _PATH_FLAGS | os.O_DIRECTORY, dir_fd=p.fd)
        try:
            stx = syscalls.statx(fd, b"", _STAT_EMPTY,
                                 syscalls.STATX_BASIC_STATS | syscalls.STATX_MNT_ID)
            if self.inodes.find(_key(stx)) is None:
                raise _err(errno.EXDEV, b"..")
        except BaseException:
            os.close(fd)
            raise
        return self._entry_for(fd)

    def forget(self, ctx: Context, inode: int, nlookup: int) -> None:
        self.inodes.forget(inode, nlookup)

    def batch_forget(self, ctx: Context, requests: list[tuple[int, int]]) -> None:
        for nodeid, nlookup in requests:
            self.inodes.forget(nodeid, nlookup)

    def getattr(self, ctx: Context, inode: int, fh: int | None) -> Attr:
        with self.inodes.borrow(inode) as i:
            return Attr.from_stat(os.fstat(i.fd))

    def statx(self, ctx: Context, inode: int, fh: int | None, flags: int, mask: int) -> Statx:
        with self.inodes.borrow(inode) as i:
            s = syscalls.statx(i.fd, b"", _STAT_EMPTY | (flags & syscalls.AT_STATX_SYNC_TYPE),
                               mask | syscalls.STATX_BASIC_STATS)
        return Statx(
            mask=s.mask & (syscalls.STATX_BASIC_STATS | syscalls.STATX_BTIME),
            ino=s.ino, mode=s.mode, nlink=s.nlink, uid=s.uid, gid=s.gid, size=s.size,
            blocks=s.blocks, blksize=s.blksize, attributes=s.attributes,
            attributes_mask=s.attributes_mask, atime=(s.atime_sec, s.atime_nsec),
            btime=(s.btime_sec, s.btime_nsec), ctime=(s.ctime_sec, s.ctime_nsec),
            mtime=(s.mtime_sec, s.mtime_nsec), rdev_major=s.rdev_major,
            rdev_minor=s.rdev_minor, dev_major=s.dev_major, dev_minor=s.dev_minor)

    @_modifies
    def setattr(self, ctx: Context, inode: int, changes: SetAttr, fh: int | None) -> Attr:
        with self.inodes.borrow(inode) as i:
            h = self.handles.acquire(fh) if fh is not None else None
            try:
                self._apply(i, h, changes)
            finally:
                if h is not None:
                    self.handles.unborrow(h)
            return Attr.from_stat(os.fstat(i.fd))

    def _apply(self, i: Inode, h: Handle | None, c: SetAttr) -> None:
        if c.mode is not None:
            if h is not None:
                os.fchmod(h.fd, c.mode & 0o7777)
            else:
                os.chmod(self._proc_name(i.fd), c.mode & 0o7777, dir_fd=self._proc_fd)
        if c.uid is not None or c.gid is not None:
            syscalls.fchownat(i.fd, b"", -1 if c.uid is None else c.uid,
                              -1 if c.gid is None else c.gid, _STAT_EMPTY)
        if c.size is not None:
            if h is not None:
                os.ftruncate(h.fd, c.size)
            else:
                if stat.S_ISDIR(i.mode):
                    raise _err(errno.EISDIR)
                fd = self._reopen(i, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, c.size)
                finally:
                    os.close(fd)
        if c.atime or c.mtime or c.atime_now or c.mtime_now:
            def when(t: tuple[int, int] | None, now: bool) -> tuple[int, int]:
                if now:
                    return (0, syscalls.UTIME_NOW)
                return t if t is not None else (0, syscalls.UTIME_OMIT)
            atime, mtime = when(c.atime, c.atime_now), when(c.mtime, c.mtime_now)
            if h is not None:
                syscalls.utimensat(h.fd, None, atime, mtime)
            else:
                syscalls.utimensat(i.fd, b"", atime, mtime, _STAT_EMPTY)
        # ctime cannot be set on Linux; kill_suidgid is only sent with HANDLE_KILLPRIV_V2,
        # which this file system does not negotiate.

    def readlink(self, ctx: Context, inode: int) -> bytes:
        with self.inodes.borrow(inode) as i:
            if not stat.S_ISLNK(i.mode):
                raise _err(errno.EINVAL)
            return os.readlink(b"", dir_fd=i.fd)

    # --- creating and removing names -----------------------------------------------------

    @_modifies
    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int) -> Entry:
        _check_name(name)
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx):
                os.mkdir(name, mode & 0o7777, dir_fd=p.fd)
            return self._lookup_child(p, name)

    @_modifies
    def mknod(self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int) -> Entry:
        _check_name(name)
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx):
                os.mknod(name, mode, rdev, dir_fd=p.fd)
            return self._lookup_child(p, name)

    @_modifies
    def symlink(self, ctx: Context, linkname: bytes, parent: int, name: bytes) -> Entry:
        _check_name(name)
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx):
                os.symlink(linkname, name, dir_fd=p.fd)
            return self._lookup_child(p, name)

    @_modifies
    def link(self, ctx: Context, inode: int, newparent: int, newname: bytes) -> Entry:
        _check_name(newname)
        with self.inodes.borrow(inode) as i, self.inodes.borrow(newparent) as p:
            # linkat through the /proc magic link: the file itself, whatever its names now
            # (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
            os.link(self._proc_name(i.fd), newname, src_dir_fd=self._proc_fd,
                    dst_dir_fd=p.fd, follow_symlinks=True)
            return self._lookup_child(p, newname)

    @_modifies
    def unlink(self, ctx: Context, parent: int, name: bytes) -> None:
        _check_name(name)
        with self.inodes.borrow(parent) as p:
            os.unlink(name, dir_fd=p.fd)

    @_modifies
    def rmdir(self, ctx: Context, parent: int, name: bytes) -> None:
        _check_name(name)
        with self.inodes.borrow(parent) as p:
            os.rmdir(name, dir_fd=p.fd)

    @_modifies
    def rename(self, ctx: Context, olddir: int, oldname: bytes, newdir: int, newname: bytes,
               flags: int) -> None:
        _check_name(oldname)
        _check_name(newname)
        with self.inodes.borrow(olddir) as o, self.inodes.borrow(newdir) as n:
            if flags:
                syscalls.renameat2(o.fd, oldname, n.fd, newname, flags)
            else:
                os.rename(oldname, newname, src_dir_fd=o.fd, dst_dir_fd=n.fd)

    # --- files --------------------------------------------------------------------------

    def open(self, ctx: Context, inode: int, flags: int) -> Opened:
        with self.inodes.borrow(inode) as i:
            if stat.S_ISDIR(i.mode):
                raise _err(errno.EISDIR)
            if self.readonly and (flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
                raise _err(errno.EROFS)
            fd = self._reopen(i, self._open_flags(flags))
            return Opened(self.handles.add(fd, i.nodeid))

    @_modifies
    def create(self, ctx: Context, parent: int, name: bytes, mode: int,
               flags: int) -> tuple[Entry, Opened]:
        _check_name(name)
        # O_NOFOLLOW: a symlink already sitting at ``name`` is refused (ELOOP), not followed
        flags = self._open_flags(flags) | (flags & os.O_EXCL) | os.O_CREAT | os.O_NOFOLLOW
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx):
                fd = os.open(name, flags, mode & 0o7777, dir_fd=p.fd)
            return self._entry_and_handle(fd)

    @_modifies
    def tmpfile(self, ctx: Context, parent: int, mode: int, flags: int) -> tuple[Entry, Opened]:
        flags = (self._open_flags(flags) & ~os.O_TMPFILE) | os.O_TMPFILE
        if flags & os.O_ACCMODE == os.O_RDONLY:
            flags |= os.O_RDWR   # O_TMPFILE needs write access; the guest will write to it
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx):
                fd = os.open(".", flags, mode & 0o7777, dir_fd=p.fd)
            return self._entry_and_handle(fd)

    def _entry_and_handle(self, fd: int) -> tuple[Entry, Opened]:
        """The inode and handle for a file we just created and opened as ``fd``."""
        try:
            entry = self._entry_for(self._path_fd_of(fd))
        except BaseException:
            os.close(fd)
            raise
        return entry, Opened(self.handles.add(fd, entry.nodeid))

    def read(self, ctx: Context, inode: int, fh: int, offset: int, size: int,
             flags: int) -> FileRange:
        h = self.handles.acquire(fh)
        return FileRange(h.fd, offset, size, done=lambda: self.handles.unborrow(h))

    @_modifies
    def write(self, ctx: Context, inode: int, fh: int, offset: int, data: WriteData,
              flags: int, kill_priv: bool) -> int:
        with self.handles.borrow(fh) as h:
            return data.to_fd(h.fd, offset)

    def flush(self, ctx: Context, inode: int, fh: int, lock_owner: int) -> None:
        # close() of a duplicate gives the host file system its close-time semantics
        # (NFS flushes on close) without giving up the handle.
        with self.handles.borrow(fh) as h:
            os.close(os.dup(h.fd))

    def fsync(self, ctx: Context, inode: int, fh: int, datasync: bool) -> None:
        with self.handles.borrow(fh) as h:
            (os.fdatasync if datasync else os.fsync)(h.fd)

    def release(self, ctx: Context, inode: int, fh: int, flags: int, flush: bool,
                lock_owner: int) -> None:
        self.handles.remove(fh)

    @_modifies
    def fallocate(self, ctx: Context, inode: int, fh: int, mode: int, offset: int,
                  length: int) -> None:
        with self.handles.borrow(fh) as h:
            syscalls.fallocate(h.fd, mode, offset, length)

    def lseek(self, ctx: Context, inode: int, fh: int, offset: int, whence: int) -> int:
        with self.handles.borrow(fh) as h:
            return os.lseek(h.fd, offset, whence)

    @_modifies
    def copy_file_range(self, ctx: Context, inode_in: int, fh_in: int, off_in: int,
                        inode_out: int, fh_out: int, off_out: int, length: int,
                        flags: int) -> int:
        if flags:
            raise _err(errno.EINVAL)
        with self.handles.borrow(fh_in) as hi, self.handles.borrow(fh_out) as ho:
            return os.copy_file_range(hi.fd, ho.fd, length, off_in, off_out)

    # --- directories ------------------------------------------------------------------------

    def opendir(self, ctx: Context, inode: int, flags: int) -> Opened:
        with self.inodes.borrow(inode) as i:
            if not stat.S_ISDIR(i.mode):
                raise _err(errno.ENOTDIR)
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=i.fd)
            return Opened(self.handles.add(fd, i.nodeid))

    def readdir(self, ctx: Context, inode: int, fh: int, offset: int) -> "_DirStream":
        return _DirStream(self.handles, self.handles.acquire(fh), offset)

    def releasedir(self, ctx: Context, inode: int, fh: int, flags: int) -> None:
        self.handles.remove(fh)

    def open_for_mapping(self, ctx: Context, inode: int, fh: int | None,
                         writable: bool) -> tuple[int, bool]:
        if writable and self.readonly:
            raise _err(errno.EROFS)
        if fh is not None:
            with self.handles.borrow(fh) as h:
                if h.nodeid != inode:
                    raise _err(errno.EBADF, "handle belongs to another inode")
                if writable and fcntl.fcntl(h.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                    raise _err(errno.EBADF, "writable mapping through a read-only handle")
        with self.inodes.borrow(inode) as i:
            if not stat.S_ISREG(i.mode):
                raise _err(errno.EINVAL, "only regular files can be mapped")
            if not self.readonly:
                try:
                    return self._reopen(i, os.O_RDWR | os.O_CLOEXEC), True
                except OSError as e:
                    if writable or e.errno not in (errno.EACCES, errno.EROFS, errno.ETXTBSY, errno.EPERM):
                        raise
            return self._reopen(i, os.O_RDONLY | os.O_CLOEXEC), False

    def lookup_count(self, inode: int) -> int:
        """How many lookups of ``inode`` the guest holds (0: it forgot it)."""
        return self.inodes.lookup_count(inode)

    def fsyncdir(self, ctx: Context, inode: int, fh: int, datasync: bool) -> None:
        self.fsync(ctx, inode, fh, datasync)

    # --- the file system as a whole ----------------------------------------------------

    def statfs(self, ctx: Context, inode: int) -> StatFs:
        with self.inodes.borrow(inode) as i:
            return StatFs.from_statvfs(os.fstatvfs(i.fd))

    def syncfs(self, ctx: Context, inode: int) -> None:
        with self.inodes.borrow(inode) as i:
            base = i if stat.S_ISDIR(i.mode) else self.inodes.root
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=base.fd)
        try:
            syscalls.syncfs(fd)
        finally:
            os.close(fd)

    def access(self, ctx: Context, inode: int, mask: int) -> None:
        with self.inodes.borrow(inode) as i:
            st = os.fstat(i.fd)
        want = mask & (os.R_OK | os.W_OK | os.X_OK)
        if not want:
            return   # F_OK: it exists
        if ctx.uid == 0:
            # root may read and write anything; execute needs some x bit (dirs: search)
            if want & os.X_OK and not stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o111:
                raise _err(errno.EACCES)
            return
        if st.st_uid == ctx.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        if want & ~bits:
            raise _err(errno.EACCES)

    # --- extended attributes (the server gates them on ServerOptions.xattr) --------------

    def _xattr_path(self, i: Inode) -> str:
        # Through the magic link: works for every file type without opening it (a FIFO or
        # device is never opened) and never follows a symlink inode's target.
        return os.path.join(self.proc_self_fd, str(i.fd))

    @_xattr_op
    def getxattr(self, ctx: Context, inode: int, name: bytes) -> bytes:
        with self.inodes.borrow(inode) as i:
            return os.getxattr(self._xattr_path(i), os.fsdecode(name))

    @_xattr_op
    def listxattr(self, ctx: Context, inode: int) -> list[bytes]:
        with self.inodes.borrow(inode) as i:
            return [os.fsencode(n) for n in os.listxattr(self._xattr_path(i))]

    @_xattr_op
    @_modifies
    def setxattr(self, ctx: Context, inode: int, name: bytes, value: bytes, flags: int) -> None:
        with self.inodes.borrow(inode) as i:
            os.setxattr(self._xattr_path(i), os.fsdecode(name), value, flags)

    @_xattr_op
    @_modifies
    def removexattr(self, ctx: Context, inode: int, name: bytes) -> None:
        with self.inodes.borrow(inode) as i:
            os.removexattr(self._xattr_path(i), os.fsdecode(name))


_GETDENTS_BUFSIZE = 8192   # twice a READDIR(PLUS) reply's worth of short names


class _DirStream:
    """Directory entries from ``offset`` on, read in getdents64 batches.

    Holds the handle (borrowed, and its position lock) until closed: the server closes it
    when the guest's buffer is full.  Seeking to the previous entry's ``d_off`` cookie and
    reading on is how a FUSE readdir continues.
    """

    def __init__(self, table: HandleTable, handle: Handle, offset: int):
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
