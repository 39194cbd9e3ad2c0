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

from pyvirtiofsd._cext import ffi, lib
from pyvirtiofsd.filesystem import (
    DIRPLUS_END, DIRPLUS_FULL, DIRPLUS_PYTHON, Attr, Context, DirEntry, Entry, FileRange,
    FileSystem, Opened, SetAttr, StatFs, Statx, WriteData,
)
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.passthrough import file_handle, syscalls
from pyvirtiofsd.passthrough.credentials import Credentials
from pyvirtiofsd.passthrough.handles import Handle, HandleTable
from pyvirtiofsd.passthrough.inodes import Inode, InodeKey, InodeTable
from pyvirtiofsd.passthrough.xattrmap import XattrMap

log = structlog.get_logger()
T = TypeVar("T")

NAME_MAX = 255
DIRPLUS_BUFFER = 64 << 10
"""The most READDIRPLUS records packed in C per request: a reply may be shorter than the
guest's buffer (it asks again from the next offset), and this bounds the memory one request
can take, whatever size the guest claims."""
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


# the C side's stop reasons are the server's
assert (lib.PVFS_DIRPLUS_END, lib.PVFS_DIRPLUS_FULL, lib.PVFS_DIRPLUS_PYTHON) == \
    (DIRPLUS_END, DIRPLUS_FULL, DIRPLUS_PYTHON)


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
    ``xattrmap``: an :class:`~.xattrmap.XattrMap` renaming xattrs between guest and host.
    ``inode_file_handles``: ``never`` | ``prefer`` | ``mandatory`` (see :mod:`.file_handle`).
    ``preserve_noatime``: keep O_NOATIME on opens (virtiofsd drops it by default: the host
    refuses it with EPERM unless the daemon's fsuid owns the file or has CAP_FOWNER).

    Besides, what the guest negotiates at INIT (:meth:`init`): with FUSE_POSIX_ACL the
    guest's umask is applied here (the host skips it where a default ACL applies); with
    FUSE_SUBMOUNTS a directory on another host mount than its parent is flagged
    FUSE_ATTR_SUBMOUNT, so the guest gives it an st_dev of its own.  Security contexts
    (``Context.secctx``) are set on every file created; FUSE_WRITE_KILL_SUIDGID and
    FATTR_KILL_SUIDGID (killpriv_v2) clear set-user-ID and set-group-ID as a write by an
    unprivileged user would -- the daemon's own writes, with CAP_FSETID, would not.
    """

    def __init__(self, root: str | os.PathLike[str], *, allow_direct_io: bool = False,
                 switch_credentials: bool | None = None, readonly: bool = False,
                 xattr: bool = False, proc_self_fd: str = "/proc/self/fd",
                 xattrmap: XattrMap | None = None, inode_file_handles: str = "never",
                 preserve_noatime: bool = False):
        if inode_file_handles not in file_handle.MODES:
            raise ValueError(f"inode_file_handles must be one of {file_handle.MODES}")
        self.root_path = os.fspath(root)
        self.allow_direct_io = allow_direct_io
        self.readonly = readonly
        self.xattr = xattr
        self.xattrmap = xattrmap
        self.preserve_noatime = preserve_noatime
        self.writeback = False
        self.posix_acl = False
        self.submounts = False
        self.proc_self_fd = proc_self_fd
        self.credentials = Credentials(switch_credentials)
        root_fd = os.open(self.root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            stx = syscalls.statx(root_fd, b"", _STAT_EMPTY, syscalls.STATX_BASIC_STATS)
            self._proc_fd = os.open(proc_self_fd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.close(root_fd)
            raise
        self.mount_fds = file_handle.MountFds()
        self.file_handles = inode_file_handles
        # C may open and register new inodes (LOOKUP, READDIRPLUS) only where each inode is
        # an fd its C entry can own, i.e. without file handles
        self.c_registers_inodes = inode_file_handles == "never"
        if inode_file_handles != "never":
            why = file_handle.probe(root_fd)
            if why is not None:
                if inode_file_handles == "mandatory":
                    os.close(root_fd)
                    os.close(self._proc_fd)
                    raise OSError(errno.EOPNOTSUPP, f"--inode-file-handles=mandatory: {why}")
                log.warning("inode file handles unusable, using O_PATH fds", reason=why)
                self.file_handles = "never"
            else:
                self.mount_fds.remember(file_handle.handle_of(root_fd).mount_id, root_fd)
        self.inodes = InodeTable(root_fd, _key(stx), stx.mode, opener=self._open_inode)
        self.handles = HandleTable()

    def close(self) -> None:
        """Release every fd (the object is unusable afterwards)."""
        self.destroy()
        self.inodes.close_root()
        os.close(self._proc_fd)
        self.mount_fds.close()

    # --- lifecycle ------------------------------------------------------------------------

    def init(self, flags: int) -> int:
        # With a guest write-back cache the guest may READ through a handle the application
        # opened write-only, and computes append offsets itself (see _open_flags).
        self.writeback = bool(flags & abi.FUSE_WRITEBACK_CACHE)
        self.posix_acl = bool(flags & abi.FUSE_POSIX_ACL)
        self.submounts = bool(flags & abi.FUSE_SUBMOUNTS)
        return flags

    def destroy(self) -> None:
        self.handles.clear()
        self.inodes.clear()

    # --- helpers ----------------------------------------------------------------------------

    def _proc_name(self, fd: int) -> str:
        return str(fd)

    def _entry_for(self, fd: int, parent_mnt: int | None = None) -> Entry:
        """Count a lookup of the file behind O_PATH ``fd`` (taking ownership of ``fd``).

        ``parent_mnt``: the mount id of the directory it was looked up in; a directory on
        another mount is a submount (announced when the guest negotiated SUBMOUNTS)."""
        try:
            stx = syscalls.statx(fd, b"", _STAT_EMPTY,
                                 syscalls.STATX_BASIC_STATS | syscalls.STATX_MNT_ID)
            handle = self._handle_for(fd, stx.mode)
        except BaseException:
            os.close(fd)
            raise
        inode = self.inodes.add_lookup(fd, _key(stx), stx.mode, handle)
        attr = _attr_from_statx(stx)
        if (self.submounts and parent_mnt is not None and stx.mnt_id != parent_mnt
                and stat.S_ISDIR(stx.mode)):
            attr.flags |= abi.FUSE_ATTR_SUBMOUNT
        return Entry(inode.nodeid, 0, attr)

    def _handle_for(self, fd: int, mode: int) -> file_handle.FileHandle | None:
        """The file handle to keep instead of ``fd`` (None: keep the fd).

        A handle is only usable with an fd on its mount: the first directory the guest
        reaches on a mount (normally its root) provides it.  A file on a mount we have no
        directory of (a bind-mounted file) keeps its fd, or fails under ``mandatory``."""
        if self.file_handles == "never":
            return None
        try:
            h = file_handle.handle_of(fd)
            if h.mount_id not in self.mount_fds:
                if not stat.S_ISDIR(mode):
                    raise OSError(errno.EOPNOTSUPP, "no directory on the file's mount")
                self.mount_fds.remember(h.mount_id, fd)
        except OSError as e:
            if self.file_handles == "mandatory":
                raise OSError(e.errno, f"no file handle (--inode-file-handles=mandatory): "
                                       f"{e.strerror}") from None
            return None
        return h

    def _open_inode(self, inode: Inode) -> int:
        """An O_PATH fd for a handle-only inode (the inode table calls this)."""
        h = inode.handle
        return file_handle.open_handle(self.mount_fds.get(h.mount_id), h,
                                       os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)

    def _lookup_child(self, parent: Inode, name: bytes) -> Entry:
        fd = syscalls.openat2(parent.fd, name, _PATH_FLAGS, _RESOLVE)
        return self._entry_for(fd, parent.key[2])

    def _created(self, parent: Inode, name: bytes, ctx: Context, is_dir: bool = False) -> Entry:
        """The entry of a node just created as ``name``, given the security contexts the
        guest asked for; if they cannot be set, the node is removed again and the error
        goes to the guest (a file must not exist unlabelled when a label was asked for)."""
        fd = syscalls.openat2(parent.fd, name, _PATH_FLAGS, _RESOLVE)
        if ctx.secctx:
            try:
                self._set_secctx(os.path.join(self.proc_self_fd, str(fd)), ctx)
            except BaseException:
                os.close(fd)
                try:
                    (os.rmdir if is_dir else os.unlink)(name, dir_fd=parent.fd)
                except OSError as e:
                    log.warning("cannot remove a node whose security context failed",
                                name=name, error=str(e))
                raise
        return self._entry_for(fd)

    def _set_secctx(self, target: str | int, ctx: Context) -> None:
        """Set each ``(name, value)`` of ``ctx.secctx`` (FUSE_SECURITY_CTX) on ``target``
        (a path or an open, non-O_PATH fd), through the xattr map, as the daemon."""
        for name, value in ctx.secctx:
            host = self.xattrmap.to_host(name) if self.xattrmap is not None else name
            os.setxattr(target, os.fsdecode(host), value)

    def _create_umask(self, ctx: Context) -> int:
        """The umask to create with: the guest's when it left applying it to us."""
        return ctx.umask if self.posix_acl else 0

    def _path_fd_of(self, fd: int) -> int:
        """An O_PATH fd for the very file ``fd`` is open on (no name lookup involved)."""
        return os.open(self._proc_name(fd), os.O_PATH | os.O_CLOEXEC, dir_fd=self._proc_fd)

    def _open_flags(self, flags: int) -> int:
        flags = (flags & ~_STRIP_OPEN) | os.O_CLOEXEC
        if not self.allow_direct_io:
            flags &= ~os.O_DIRECT
        if not self.preserve_noatime:
            flags &= ~os.O_NOATIME
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
        # ctime cannot be set on Linux.
        if c.kill_suidgid and stat.S_ISREG(i.mode):
            # killpriv_v2: a truncate (or open with O_TRUNC) by an unprivileged guest user
            self._kill_suidgid(h.fd if h is not None else None, i)

    def _kill_suidgid(self, fd: int | None, i: Inode | None = None) -> None:
        """Clear set-user-ID, and set-group-ID where group-execute is set, as the host
        kernel does for a write or truncate by a caller without CAP_FSETID."""
        st = os.fstat(fd) if fd is not None else os.fstat(i.fd)
        mode = st.st_mode
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if not mode & kill:
            return
        new = stat.S_IMODE(mode) & ~kill
        if fd is not None:
            os.fchmod(fd, new)
        else:
            os.chmod(self._proc_name(i.fd), new, dir_fd=self._proc_fd)

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
            with self.credentials.caller(ctx, self._create_umask(ctx)):
                os.mkdir(name, mode & 0o7777, dir_fd=p.fd)
            return self._created(p, name, ctx, is_dir=True)

    @_modifies
    def mknod(self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int) -> Entry:
        _check_name(name)
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx, self._create_umask(ctx)):
                os.mknod(name, mode, rdev, dir_fd=p.fd)
            return self._created(p, name, ctx)

    @_modifies
    def symlink(self, ctx: Context, linkname: bytes, parent: int, name: bytes) -> Entry:
        _check_name(name)
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx):
                os.symlink(linkname, name, dir_fd=p.fd)
            return self._created(p, name, ctx)

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
            with self.credentials.caller(ctx, self._create_umask(ctx)):
                fd = os.open(name, flags, mode & 0o7777, dir_fd=p.fd)
            if ctx.secctx:
                try:
                    self._set_secctx(fd, ctx)
                except BaseException:
                    os.close(fd)
                    if flags & os.O_EXCL:   # only a file this request made is removed
                        try:
                            os.unlink(name, dir_fd=p.fd)
                        except OSError:
                            pass
                    raise
            return self._entry_and_handle(fd)

    @_modifies
    def tmpfile(self, ctx: Context, parent: int, mode: int, flags: int) -> tuple[Entry, Opened]:
        flags = (self._open_flags(flags) & ~os.O_TMPFILE) | os.O_TMPFILE
        if flags & os.O_ACCMODE == os.O_RDONLY:
            flags |= os.O_RDWR   # O_TMPFILE needs write access; the guest will write to it
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx, self._create_umask(ctx)):
                fd = os.open(".", flags, mode & 0o7777, dir_fd=p.fd)
            if ctx.secctx:
                try:
                    self._set_secctx(fd, ctx)
                except BaseException:
                    os.close(fd)
                    raise
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
            n = data.to_fd(h.fd, offset)
            if kill_priv:
                # killpriv_v2: the guest left clearing set-user/group-ID on a write by an
                # unprivileged user to us (the C hot path hands such writes to Python).
                self._kill_suidgid(h.fd)
            return n

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

    def readdirplus_records(self, ctx: Context, inode: int, fh: int, offset: int, room: int,
                            blksize: int, timeout: float) -> tuple[bytes, int, int]:
        """READDIRPLUS records packed in C (see :meth:`FileSystem.readdir`): getdents64,
        then per entry statx and the C inode table -- new inodes opened and registered there
        too unless inodes keep file handles, which only :meth:`lookup` makes."""
        if type(self).lookup is not PassthroughFs.lookup or room <= 0:
            return b"", offset, DIRPLUS_PYTHON
        with self.handles.borrow(fh) as h, h.lock, self.inodes.borrow(inode) as p:
            if p.c is None or p.fd < 0:
                return b"", offset, DIRPLUS_PYTHON          # not in the C table
            room = min(room, DIRPLUS_BUFFER)   # a shorter reply is fine: the guest asks again
            buf = ffi.new("uint8_t[]", room)
            nxt, why = ffi.new("uint64_t *"), ffi.new("int *")
            whole = int(timeout)
            n = lib.pvfs_dirplus(self.inodes.c_table, h.fd, p.fd, p.key[2],
                                 int(self.c_registers_inodes), offset, buf, room, blksize,
                                 whole, int((timeout - whole) * 1e9), nxt, why)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return ffi.buffer(buf, n)[:], nxt[0], why[0]

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

    def _host_xattr(self, name: bytes) -> str:
        return os.fsdecode(self.xattrmap.to_host(name) if self.xattrmap is not None else name)

    @_xattr_op
    def getxattr(self, ctx: Context, inode: int, name: bytes) -> bytes:
        host = self._host_xattr(name)
        with self.inodes.borrow(inode) as i:
            return os.getxattr(self._xattr_path(i), host)

    @_xattr_op
    def listxattr(self, ctx: Context, inode: int) -> list[bytes]:
        with self.inodes.borrow(inode) as i:
            names = [os.fsencode(n) for n in os.listxattr(self._xattr_path(i))]
        if self.xattrmap is None:
            return names
        return [g for g in map(self.xattrmap.to_guest, names) if g is not None]

    @_xattr_op
    @_modifies
    def setxattr(self, ctx: Context, inode: int, name: bytes, value: bytes, flags: int) -> None:
        host = self._host_xattr(name)
        with self.inodes.borrow(inode) as i:
            os.setxattr(self._xattr_path(i), host, value, flags)
            if ctx.kill_sgid and name == b"system.posix_acl_access":
                # The guest caller is not in the file's group: setting an access ACL clears
                # set-group-ID -- which the host skips for us, holding CAP_FSETID.
                st = os.fstat(i.fd)
                if st.st_mode & stat.S_ISGID:
                    os.chmod(self._proc_name(i.fd), stat.S_IMODE(st.st_mode) & ~stat.S_ISGID,
                             dir_fd=self._proc_fd)

    @_xattr_op
    @_modifies
    def removexattr(self, ctx: Context, inode: int, name: bytes) -> None:
        host = self._host_xattr(name)
        with self.inodes.borrow(inode) as i:
            os.removexattr(self._xattr_path(i), host)


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
