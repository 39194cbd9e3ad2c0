"""PassthroughFs's operations on open files: OPEN, CREATE, TMPFILE, READ, WRITE, FLUSH,
FSYNC, RELEASE, FALLOCATE, LSEEK, COPY_FILE_RANGE, and the fds a DAX window maps."""
from __future__ import annotations

import errno
import fcntl
import os
import stat

from pyvirtiofsd.filesystem import Context, Entry, FileRange, Opened, WriteData
from pyvirtiofsd.passthrough import syscalls
from pyvirtiofsd.passthrough.common import PassthroughBase, check_name, err, modifies


class FileOps(PassthroughBase):
    """Mixed into :class:`~pyvirtiofsd.passthrough.PassthroughFs`."""

    def open(self, ctx: Context, inode: int, flags: int) -> Opened:
        with self.inodes.borrow(inode) as i:
            if stat.S_ISDIR(i.mode):
                raise err(errno.EISDIR)
            if self.readonly and (flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
                raise err(errno.EROFS)
            fd = self._reopen(i, self._open_flags(flags))
            return Opened(self.handles.add(fd, i.nodeid))

    @modifies
    def create(self, ctx: Context, parent: int, name: bytes, mode: int,
               flags: int) -> tuple[Entry, Opened]:
        check_name(name)
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

    @modifies
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

    @modifies
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

    @modifies
    def fallocate(self, ctx: Context, inode: int, fh: int, mode: int, offset: int,
                  length: int) -> None:
        with self.handles.borrow(fh) as h:
            syscalls.fallocate(h.fd, mode, offset, length)

    def lseek(self, ctx: Context, inode: int, fh: int, offset: int, whence: int) -> int:
        with self.handles.borrow(fh) as h:
            return os.lseek(h.fd, offset, whence)

    @modifies
    def copy_file_range(self, ctx: Context, inode_in: int, fh_in: int, off_in: int,
                        inode_out: int, fh_out: int, off_out: int, length: int,
                        flags: int) -> int:
        if flags:
            raise err(errno.EINVAL)
        with self.handles.borrow(fh_in) as hi, self.handles.borrow(fh_out) as ho:
            return os.copy_file_range(hi.fd, ho.fd, length, off_in, off_out)

    def open_for_mapping(self, ctx: Context, inode: int, fh: int | None,
                         writable: bool) -> tuple[int, bool]:
        if writable and self.readonly:
            raise err(errno.EROFS)
        if fh is not None:
            with self.handles.borrow(fh) as h:
                if h.nodeid != inode:
                    raise err(errno.EBADF, "handle belongs to another inode")
                if writable and fcntl.fcntl(h.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                    raise err(errno.EBADF, "writable mapping through a read-only handle")
        with self.inodes.borrow(inode) as i:
            if not stat.S_ISREG(i.mode):
                raise err(errno.EINVAL, "only regular files can be mapped")
            if not self.readonly:
                try:
                    return self._reopen(i, os.O_RDWR | os.O_CLOEXEC), True
                except OSError as e:
                    if writable or e.errno not in (errno.EACCES, errno.EROFS, errno.ETXTBSY, errno.EPERM):
                        raise
            return self._reopen(i, os.O_RDONLY | os.O_CLOEXEC), False
