"""The value types of the :class:`~pyvirtiofsd.filesystem.FileSystem` interface: who is
asking (:class:`Context`), what a file system answers (:class:`Attr`, :class:`Statx`,
:class:`Entry`, :class:`DirEntry`, :class:`Opened`, :class:`StatFs`, :class:`FileRange`)
and what a request carries (:class:`SetAttr`, :class:`WriteData`).  Import them from
:mod:`pyvirtiofsd.filesystem` or :mod:`pyvirtiofsd`; they live here to keep the interface
readable on its own."""
from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pyvirtiofsd.fuse.request import FuseRequest


@dataclass(frozen=True, slots=True)
class Context:
    """Who is asking: the caller's ids from ``fuse_in_header`` (and the umask the guest sent
    with a create-type request, 0 when it sent none).

    What some requests carry besides (request extensions and flags, see
    :class:`pyvirtiofsd.server.Server`): ``secctx``, the security contexts a create-type
    request asks the new file to get, as ``(xattr name, value)`` pairs (FUSE_SECURITY_CTX);
    ``supp_groups``, supplementary groups the caller acts with while creating
    (FUSE_CREATE_SUPP_GROUP); ``kill_sgid``, set on a SETXATTR of an access ACL that must
    clear the file's set-group-ID bit (FUSE_SETXATTR_ACL_KILL_SGID)."""

    uid: int
    gid: int
    pid: int
    umask: int = 0
    secctx: tuple[tuple[bytes, bytes], ...] = ()
    supp_groups: tuple[int, ...] = ()
    kill_sgid: bool = False


@dataclass(slots=True)
class Attr:
    """The fields of ``struct fuse_attr``.

    Times are seconds plus nanoseconds, as on the wire; ``rdev`` is a host ``dev_t`` (what
    :func:`os.makedev` builds).  ``blksize`` is informational only: the server always
    reports the guest page size instead (see ``ServerOptions.guest_page_size``).
    """

    ino: int
    size: int = 0
    blocks: int = 0
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    atimensec: int = 0
    mtimensec: int = 0
    ctimensec: int = 0
    mode: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    blksize: int = 0
    flags: int = 0

    @classmethod
    def from_stat(cls, st: os.stat_result) -> "Attr":
        """Build from :func:`os.stat`/:func:`os.fstat` output."""
        a_s, a_ns = divmod(st.st_atime_ns, 1_000_000_000)
        m_s, m_ns = divmod(st.st_mtime_ns, 1_000_000_000)
        c_s, c_ns = divmod(st.st_ctime_ns, 1_000_000_000)
        return cls(
            ino=st.st_ino, size=st.st_size, blocks=st.st_blocks,
            atime=a_s, mtime=m_s, ctime=c_s, atimensec=a_ns, mtimensec=m_ns, ctimensec=c_ns,
            mode=st.st_mode, nlink=st.st_nlink, uid=st.st_uid, gid=st.st_gid,
            rdev=st.st_rdev, blksize=st.st_blksize,
        )


@dataclass(slots=True)
class Statx:
    """The fields of ``struct fuse_statx`` (the FUSE_STATX reply, protocol 7.39).

    Times are ``(seconds, nanoseconds)``.  ``mask`` says which fields are valid (``STATX_*``
    bits); the Linux guest ignores a reply without all of ``STATX_BASIC_STATS``.
    """

    mask: int
    ino: int
    mode: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    size: int = 0
    blocks: int = 0
    blksize: int = 0
    attributes: int = 0
    attributes_mask: int = 0
    atime: tuple[int, int] = (0, 0)
    btime: tuple[int, int] = (0, 0)
    ctime: tuple[int, int] = (0, 0)
    mtime: tuple[int, int] = (0, 0)
    rdev_major: int = 0
    rdev_minor: int = 0
    dev_major: int = 0
    dev_minor: int = 0

    @classmethod
    def from_attr(cls, attr: Attr) -> "Statx":
        """What a file system without a ``statx`` of its own reports: the basic stats."""
        return cls(
            mask=0x7FF,  # STATX_BASIC_STATS
            ino=attr.ino, mode=attr.mode, nlink=attr.nlink, uid=attr.uid, gid=attr.gid,
            size=attr.size, blocks=attr.blocks, blksize=attr.blksize,
            atime=(attr.atime, attr.atimensec), ctime=(attr.ctime, attr.ctimensec),
            mtime=(attr.mtime, attr.mtimensec),
            rdev_major=os.major(attr.rdev), rdev_minor=os.minor(attr.rdev),
        )


@dataclass(slots=True)
class Entry:
    """A name resolved to an inode: the ``fuse_entry_out`` of LOOKUP, MKDIR, CREATE...

    ``entry_timeout``/``attr_timeout`` are seconds the guest may cache the name and the
    attributes; ``None`` lets the server apply its cache policy (``ServerOptions.cache``).
    """

    nodeid: int
    generation: int
    attr: Attr
    entry_timeout: float | None = None
    attr_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry from :meth:`FileSystem.readdir`.

    ``offset`` is the cookie the guest passes back to continue *after* this entry;
    ``type`` is the ``DT_*`` value (``stat.S_IFMT(mode) >> 12``).
    """

    ino: int
    offset: int
    type: int
    name: bytes


@dataclass(slots=True)
class FileRange:
    """A read result meaning "take up to ``size`` bytes of ``fd`` at ``offset``".

    The server moves the bytes straight from the fd into the reply (``preadv`` into guest
    memory on a virtqueue), so they never become a Python object.  ``done``, when given, is
    called once the transfer is over, also on failure: the place to drop a reference that
    keeps ``fd`` open meanwhile.
    """

    fd: int
    offset: int
    size: int
    done: Callable[[], None] | None = None


@dataclass(slots=True)
class Opened:
    """What ``open``/``opendir``/``create``/``tmpfile`` return: the handle and the
    ``FOPEN_*`` bits (the server adds the ones its cache policy asks for)."""

    fh: int = 0
    open_flags: int = 0


@dataclass(slots=True)
class SetAttr:
    """The changes a SETATTR asks for; ``None`` (or ``False``) means "leave alone".

    ``atime_now``/``mtime_now`` mean "set to the current time" (``UTIME_NOW``).
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: tuple[int, int] | None = None
    mtime: tuple[int, int] | None = None
    atime_now: bool = False
    mtime_now: bool = False
    ctime: tuple[int, int] | None = None
    kill_suidgid: bool = False


@dataclass(frozen=True, slots=True)
class StatFs:
    """The fields of ``struct fuse_kstatfs`` (STATFS reply)."""

    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int

    @classmethod
    def from_statvfs(cls, st: os.statvfs_result) -> "StatFs":
        return cls(st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree,
                   st.f_bsize, st.f_namemax, st.f_frsize)


class WriteData:
    """The payload of a WRITE request, still in the request (guest memory on a virtqueue).

    An in-memory file system calls :meth:`read`; a file system backed by file descriptors
    calls :meth:`to_fd`, which writes straight from the request without a Python copy.
    """

    __slots__ = ("_req", "_in_offset", "size")

    def __init__(self, req: "FuseRequest", in_offset: int, size: int):
        self._req = req
        self._in_offset = in_offset
        self.size = size
        """Bytes of payload."""

    def read(self) -> bytes:
        """The whole payload as bytes."""
        return self._req.read_in(self._in_offset, self.size)

    def to_fd(self, fd: int, offset: int) -> int:
        """``pwrite`` the payload to ``fd`` at ``offset``; returns bytes written."""
        return self._req.in_to_fd(fd, self._in_offset, self.size, offset)

    def __len__(self) -> int:
        return self.size


def dirent_type(mode: int) -> int:
    """The ``DT_*`` value of a ``st_mode`` (what :class:`DirEntry` ``type`` wants)."""
    return stat_mod.S_IFMT(mode) >> 12

