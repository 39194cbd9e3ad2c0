"""Python faces for the C syscalls in ``cext/fsops.c``: OSError instead of ``-errno``.

Only what :mod:`os` lacks lives here (openat2, setfsuid, renameat2, statx, fchownat with
AT_EMPTY_PATH, utimensat with UTIME_OMIT, fallocate modes, syncfs, getdents64).
"""
from __future__ import annotations

import os
import struct
from typing import Iterator, NamedTuple

from pyvirtiofsd._cext import ffi, lib

RESOLVE_NO_XDEV = lib.PVFS_FS_RESOLVE_NO_XDEV
RESOLVE_NO_MAGICLINKS = lib.PVFS_FS_RESOLVE_NO_MAGICLINKS
RESOLVE_NO_SYMLINKS = lib.PVFS_FS_RESOLVE_NO_SYMLINKS
RESOLVE_BENEATH = lib.PVFS_FS_RESOLVE_BENEATH
RESOLVE_IN_ROOT = lib.PVFS_FS_RESOLVE_IN_ROOT

UTIME_NOW = lib.PVFS_FS_UTIME_NOW
UTIME_OMIT = lib.PVFS_FS_UTIME_OMIT

AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_STATX_SYNC_TYPE = 0x6000
STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800
STATX_MNT_ID = 0x1000


def _check(rc: int, *what: object) -> int:
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc), *what)
    return rc


def openat2(dirfd: int, path: bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2) (or its single-component fallback on kernels without it)."""
    return _check(lib.pvfs_fs_openat2(dirfd, path, flags, mode, resolve), path)


def set_openat2_enabled(enabled: bool) -> None:
    """Force the no-openat2 fallback (tests) or allow openat2 again."""
    lib.pvfs_fs_set_openat2_enabled(1 if enabled else 0)


def setfsuid(uid: int) -> int:
    """Set this thread's fsuid; return the previous one.  PermissionError if refused."""
    return _check(lib.pvfs_fs_setfsuid(uid))


def setfsgid(gid: int) -> int:
    return _check(lib.pvfs_fs_setfsgid(gid))


def unshare_fs() -> None:
    """Give this thread a private fs_struct, so its umask is its own."""
    _check(lib.pvfs_fs_unshare_fs())


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    _check(lib.pvfs_fs_renameat2(olddirfd, old, newdirfd, new, flags), old, new)


def statx(dirfd: int, path: bytes, flags: int, mask: int):
    """statx(2): a ``struct pvfs_fs_statx`` (cdata) with the fields and ``mnt_id``."""
    out = ffi.new("struct pvfs_fs_statx *")
    _check(lib.pvfs_fs_statx(dirfd, path, flags, mask, out), path)
    return out


def fchownat(dirfd: int, path: bytes, uid: int, gid: int, flags: int) -> None:
    """``uid``/``gid`` of -1 leave that id alone."""
    _check(lib.pvfs_fs_fchownat(dirfd, path, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, flags))


def utimensat(dirfd: int, path: bytes | None, atime: tuple[int, int],
              mtime: tuple[int, int], flags: int = 0) -> None:
    """Times are ``(sec, nsec)``; nsec may be UTIME_NOW/UTIME_OMIT.  ``path`` None:
    futimens(dirfd)."""
    _check(lib.pvfs_fs_utimensat(dirfd, ffi.NULL if path is None else path,
                                 atime[0], atime[1], mtime[0], mtime[1], flags))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(lib.pvfs_fs_fallocate(fd, mode, offset, length))


def syncfs(fd: int) -> None:
    _check(lib.pvfs_fs_syncfs(fd))


class Dirent64(NamedTuple):
    ino: int
    off: int
    type: int
    name: bytes


_DIRENT64 = struct.Struct("<QqHB")   # d_ino, d_off, d_reclen, d_type; d_name follows


def getdents64(fd: int, bufsize: int = 32768) -> Iterator[Dirent64]:
    """Read one batch of ``linux_dirent64`` records from the directory's current position.

    Unlike :func:`os.scandir` this gives each entry's ``d_off``: the file system's own
    cookie for "right after this entry", which is what a FUSE readdir offset must be.
    """
    buf = ffi.new("char[]", bufsize)
    n = _check(lib.pvfs_fs_getdents64(fd, buf, bufsize))
    data = ffi.buffer(buf, n)[:]
    pos = 0
    while pos < n:
        ino, off, reclen, dtype = _DIRENT64.unpack_from(data, pos)
        name_start = pos + _DIRENT64.size
        end = data.index(b"\0", name_start, pos + reclen)
        yield Dirent64(ino, off, dtype, data[name_start:end])
        pos += reclen
