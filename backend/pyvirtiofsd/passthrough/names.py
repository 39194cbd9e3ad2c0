"""PassthroughFs's operations on names and inodes: LOOKUP (``..`` included), FORGET,
attributes (GETATTR, STATX, SETATTR), READLINK, creating and removing names, and the file
system as a whole (ACCESS, STATFS, SYNCFS)."""
from __future__ import annotations

import errno
import os
import stat

from pyvirtiofsd.filesystem import Attr, Context, Entry, SetAttr, StatFs, Statx
from pyvirtiofsd.passthrough import syscalls
from pyvirtiofsd.passthrough.common import (
    PATH_FLAGS, STAT_EMPTY, PassthroughBase, check_name, err, inode_key, modifies,
)
from pyvirtiofsd.passthrough.store import Handle, Inode


class NameOps(PassthroughBase):
    """Mixed into :class:`~pyvirtiofsd.passthrough.PassthroughFs`."""

    # --- names and inodes ---------------------------------------------------------------

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        check_name(name, creating=False)
        with self.inodes.borrow(parent) as p:
            if name == b"." or (name == b".." and p.is_root):
                self.inodes.add_existing(p)
                return Entry(p.nodeid, 0, Attr.from_stat(os.fstat(p.fd)))
            if name == b"..":
                return self._lookup_dotdot(p)
            return self._lookup_child(p, name)

    def _lookup_dotdot(self, p: Inode) -> Entry:
        fd = os.open("..", PATH_FLAGS | os.O_DIRECTORY, dir_fd=p.fd)
        try:
            stx = syscalls.statx(fd, b"", STAT_EMPTY,
                                 syscalls.STATX_BASIC_STATS | syscalls.STATX_MNT_ID)
            if not self.inodes.find(inode_key(stx)):
                raise err(errno.EXDEV, b"..")
        except BaseException:
            os.close(fd)
            raise
        return self._entry_for(fd)

    def forget(self, ctx: Context, inode: int, nlookup: int) -> None:
        self.inodes.forget(inode, nlookup)

    def batch_forget(self, ctx: Context, requests: list[tuple[int, int]]) -> None:
        self.inodes.forget_many(requests)

    def lookup_count(self, inode: int) -> int:
        """How many lookups of ``inode`` the guest holds (0: it forgot it)."""
        return self.inodes.lookup_count(inode)

    def getattr(self, ctx: Context, inode: int, fh: int | None) -> Attr:
        with self.inodes.borrow(inode) as i:
            return Attr.from_stat(os.fstat(i.fd))

    def statx(self, ctx: Context, inode: int, fh: int | None, flags: int, mask: int) -> Statx:
        with self.inodes.borrow(inode) as i:
            s = syscalls.statx(i.fd, b"", STAT_EMPTY | (flags & syscalls.AT_STATX_SYNC_TYPE),
                               mask | syscalls.STATX_BASIC_STATS)
        return Statx(
            mask=s.mask & (syscalls.STATX_BASIC_STATS | syscalls.STATX_BTIME),
            ino=s.ino, mode=s.mode, nlink=s.nlink, uid=s.uid, gid=s.gid, size=s.size,
            blocks=s.blocks, blksize=s.blksize, attributes=s.attributes,
            attributes_mask=s.attributes_mask, atime=(s.atime_sec, s.atime_nsec),
            btime=(s.btime_sec, s.btime_nsec), ctime=(s.ctime_sec, s.ctime_nsec),
            mtime=(s.mtime_sec, s.mtime_nsec), rdev_major=s.rdev_major,
            rdev_minor=s.rdev_minor, dev_major=s.dev_major, dev_minor=s.dev_minor)

    @modifies
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
                              -1 if c.gid is None else c.gid, STAT_EMPTY)
        if c.size is not None:
            if h is not None:
                os.ftruncate(h.fd, c.size)
            else:
                if stat.S_ISDIR(i.mode):
                    raise err(errno.EISDIR)
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
                syscalls.utimensat(i.fd, b"", atime, mtime, STAT_EMPTY)
        # ctime cannot be set on Linux.
        if c.kill_suidgid and stat.S_ISREG(i.mode):
            # killpriv_v2: a truncate (or open with O_TRUNC) by an unprivileged guest user
            self._kill_suidgid(h.fd if h is not None else None, i)

    def readlink(self, ctx: Context, inode: int) -> bytes:
        with self.inodes.borrow(inode) as i:
            if not stat.S_ISLNK(i.mode):
                raise err(errno.EINVAL)
            return os.readlink(b"", dir_fd=i.fd)

    # --- creating and removing names -----------------------------------------------------

    @modifies
    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int) -> Entry:
        check_name(name)
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx, self._create_umask(ctx)):
                os.mkdir(name, mode & 0o7777, dir_fd=p.fd)
            return self._created(p, name, ctx, is_dir=True)

    @modifies
    def mknod(self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int) -> Entry:
        check_name(name)
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx, self._create_umask(ctx)):
                os.mknod(name, mode, rdev, dir_fd=p.fd)
            return self._created(p, name, ctx)

    @modifies
    def symlink(self, ctx: Context, linkname: bytes, parent: int, name: bytes) -> Entry:
        check_name(name)
        with self.inodes.borrow(parent) as p:
            with self.credentials.caller(ctx):
                os.symlink(linkname, name, dir_fd=p.fd)
            return self._created(p, name, ctx)

    @modifies
    def link(self, ctx: Context, inode: int, newparent: int, newname: bytes) -> Entry:
        check_name(newname)
        with self.inodes.borrow(inode) as i, self.inodes.borrow(newparent) as p:
            # linkat through the /proc magic link: the file itself, whatever its names now
            # (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
            os.link(self._proc_name(i.fd), newname, src_dir_fd=self._proc_fd,
                    dst_dir_fd=p.fd, follow_symlinks=True)
            return self._lookup_child(p, newname)

    @modifies
    def unlink(self, ctx: Context, parent: int, name: bytes) -> None:
        check_name(name)
        with self.inodes.borrow(parent) as p:
            os.unlink(name, dir_fd=p.fd)

    @modifies
    def rmdir(self, ctx: Context, parent: int, name: bytes) -> None:
        check_name(name)
        with self.inodes.borrow(parent) as p:
            os.rmdir(name, dir_fd=p.fd)

    @modifies
    def rename(self, ctx: Context, olddir: int, oldname: bytes, newdir: int, newname: bytes,
               flags: int) -> None:
        check_name(oldname)
        check_name(newname)
        with self.inodes.borrow(olddir) as o, self.inodes.borrow(newdir) as n:
            if flags:
                syscalls.renameat2(o.fd, oldname, n.fd, newname, flags)
            else:
                os.rename(oldname, newname, src_dir_fd=o.fd, dst_dir_fd=n.fd)

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
                raise err(errno.EACCES)
            return
        if st.st_uid == ctx.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        if want & ~bits:
            raise err(errno.EACCES)
