"""What PassthroughFs's operation groups share: the flags every host call uses, the
checks every name passes, the decorators for read-only and xattr-less file systems, and
:class:`PassthroughBase`, the state and helpers the groups build on (how an inode is
looked up, counted, reopened for I/O; acting as the caller while creating)."""
from __future__ import annotations

import errno
import functools
import os
import stat
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from pyvirtiofsd import logs

from pyvirtiofsd.filesystem import Attr, Context, Entry, FileSystem
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.passthrough import file_handle, syscalls
from pyvirtiofsd.passthrough.credentials import Credentials
from pyvirtiofsd.passthrough.store import Handles, Inode, InodeKey, Inodes, Store
from pyvirtiofsd.passthrough.xattrmap import XattrMap

if TYPE_CHECKING:
    from pyvirtiofsd.passthrough.fs import PassthroughFs

log = logs.get_logger()
T = TypeVar("T")

NAME_MAX = 255
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_MAGICLINKS
STAT_EMPTY = syscalls.AT_EMPTY_PATH | syscalls.AT_SYMLINK_NOFOLLOW
# Open flags a guest may not pass through to the host reopen: creation is done by
# create/tmpfile, O_NOFOLLOW would refuse the /proc magic link, O_PATH is guest-local.
STRIP_OPEN = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_PATH




def err(code: int, *what: object) -> OSError:
    return OSError(code, os.strerror(code), *what)


def check_name(name: bytes, creating: bool = True) -> None:
    """One path component that names a real entry: refused before any syscall sees it."""
    if not name or b"/" in name or b"\0" in name:
        raise err(errno.EINVAL, name)
    if len(name) > NAME_MAX:
        raise err(errno.ENAMETOOLONG, name)
    if creating and name in (b".", b".."):
        raise err(errno.EINVAL, name)


def modifies(method: Callable[..., T]) -> Callable[..., T]:
    """Refuse the operation with EROFS on a read-only file system."""
    @functools.wraps(method)
    def guarded(self: "PassthroughFs", *args: Any, **kwargs: Any) -> T:
        if self.readonly:
            raise err(errno.EROFS)
        return method(self, *args, **kwargs)
    return guarded


def xattr_op(method: Callable[..., T]) -> Callable[..., T]:
    """ENOSYS unless xattrs are enabled: the guest then stops asking."""
    @functools.wraps(method)
    def guarded(self: "PassthroughFs", *args: Any, **kwargs: Any) -> T:
        if not self.xattr:
            raise err(errno.ENOSYS)
        return method(self, *args, **kwargs)
    return guarded


def inode_key(stx) -> InodeKey:
    return (os.makedev(stx.dev_major, stx.dev_minor), stx.ino, stx.mnt_id)


def attr_from_statx(stx) -> Attr:
    return Attr(
        ino=stx.ino, size=stx.size, blocks=stx.blocks,
        atime=stx.atime_sec, mtime=stx.mtime_sec, ctime=stx.ctime_sec,
        atimensec=stx.atime_nsec, mtimensec=stx.mtime_nsec, ctimensec=stx.ctime_nsec,
        mode=stx.mode, nlink=stx.nlink, uid=stx.uid, gid=stx.gid,
        rdev=os.makedev(stx.rdev_major, stx.rdev_minor), blksize=stx.blksize,
    )


class PassthroughBase(FileSystem):
    """The state :class:`~pyvirtiofsd.passthrough.PassthroughFs` sets up, and the helpers
    its operation groups (:mod:`.names`, :mod:`.files`, :mod:`.dirs`, :mod:`.xattrs`)
    share."""

    root_path: str
    allow_direct_io: bool
    readonly: bool
    xattr: bool
    xattrmap: XattrMap | None
    preserve_noatime: bool
    writeback: bool
    posix_acl: bool
    submounts: bool
    proc_self_fd: str
    credentials: Credentials
    file_handles: str
    store: Store
    inodes: Inodes
    handles: Handles
    _proc_fd: int

    def _proc_name(self, fd: int) -> str:
        return str(fd)

    def _entry_for(self, fd: int, parent_mnt: int | None = None) -> Entry:
        """Count a lookup of the file behind O_PATH ``fd`` (taking ownership of ``fd``).

        ``parent_mnt``: the mount id of the directory it was looked up in; a directory on
        another mount is a submount (announced when the guest negotiated SUBMOUNTS)."""
        try:
            stx = syscalls.statx(fd, b"", STAT_EMPTY,
                                 syscalls.STATX_BASIC_STATS | syscalls.STATX_MNT_ID)
            handle = self._handle_for(fd, stx.mode)
        except BaseException:
            os.close(fd)
            raise
        nodeid = self.inodes.add_lookup(fd, inode_key(stx), stx.mode, handle)
        attr = attr_from_statx(stx)
        if (self.submounts and parent_mnt is not None and stx.mnt_id != parent_mnt
                and stat.S_ISDIR(stx.mode)):
            attr.flags |= abi.FUSE_ATTR_SUBMOUNT
        return Entry(nodeid, 0, attr)

    def _handle_for(self, fd: int, mode: int) -> file_handle.FileHandle | None:
        """The file handle a new inode keeps instead of ``fd`` (None: it keeps the fd).  The
        store decides, for C and Python alike (cext/store.h, "File handles"): a file on a
        mount the store has no directory of keeps its fd, or fails under ``mandatory``."""
        return self.store.make_handle(fd, mode)

    def _lookup_child(self, parent: Inode, name: bytes) -> Entry:
        fd = syscalls.openat2(parent.fd, name, PATH_FLAGS, RESOLVE)
        return self._entry_for(fd, parent.key[2])

    def _created(self, parent: Inode, name: bytes, ctx: Context, is_dir: bool = False) -> Entry:
        """The entry of a node just created as ``name``, given the security contexts the
        guest asked for; if they cannot be set, the node is removed again and the error
        goes to the guest (a file must not exist unlabelled when a label was asked for)."""
        fd = syscalls.openat2(parent.fd, name, PATH_FLAGS, RESOLVE)
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
        flags = (flags & ~STRIP_OPEN) | os.O_CLOEXEC
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
            raise err(errno.ELOOP)
        if not (stat.S_ISREG(inode.mode) or stat.S_ISDIR(inode.mode)):
            raise err(errno.EACCES)
        return os.open(self._proc_name(inode.fd), flags, dir_fd=self._proc_fd)

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
