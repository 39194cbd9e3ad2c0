"""The DAX cache window: FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING turned into shared-memory
map/unmap requests to the front-end (the VMM owns the window; we only ask it to mmap a
file's fd at an offset of it).

What the FUSE side asks for and what the front-end allows differ, and this module is the
adapter:

* virtio-fs lets a mapping replace or split existing ones; SHMEM_MAP refuses to map over
  a mapping and SHMEM_UNMAP takes only whole mappings.  So we keep an interval map of what
  is mapped where, unmap every mapping a request overlaps and re-map the surviving pieces.
* The guest asks for 2 MiB ranges even past end of file; a VMM cannot map file pages that
  do not exist (QEMU refuses, and touching them would SIGBUS the VMM).  We map the part
  of the range the file covers, rounded up to whole host pages, and *refresh* a file's
  mappings whenever an operation may have changed its size (WRITE, SETATTR, FALLOCATE,
  COPY_FILE_RANGE, GETATTR), so growth becomes visible and truncation never leaves a
  mapping past EOF.
* Offsets must be aligned to the host page size (what we told the guest in
  ``map_alignment``), whatever the guest's own page size is.

Mappings belong to inodes.  One made through an explicit file handle lives until that
handle is released; one made with ``fh = -1`` (what Linux sends) until REMOVEMAPPING,
the guest forgetting the inode, DESTROY, or a device reset.
"""
from __future__ import annotations

import bisect
import dataclasses
import errno
import os
import stat
import threading

from pyvirtiofsd import logs

from .filesystem import Attr, Context
from .fuse import abi

log = logs.get_logger("pyvirtiofsd.dax")

NO_FH = 2**64 - 1
SHMID_CACHE = 0  # VIRTIO_FS_SHMCAP_ID_CACHE
DAX_RANGE = 2 << 20  # the guest's mapping granularity (FUSE_DAX_SHIFT 21)


def _err(code: int, why: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {why}")


def host_page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass
class Mapping:
    moffset: int      # where in the window
    length: int       # what the guest asked for
    nodeid: int
    foffset: int
    writable: bool
    fh: int | None    # the handle it was made through, None for fh = -1
    mapped: int = 0   # bytes the front-end really mapped (a host-page multiple <= length)

    @property
    def end(self) -> int:
        return self.moffset + self.length


class _File:
    """One fd per mapped inode, shared by its mappings (opened read-write when we may:
    QEMU maps every fd writable, even for read-only mappings)."""

    __slots__ = ("fd", "writable", "users")

    def __init__(self, fd: int, writable: bool):
        self.fd, self.writable, self.users = fd, writable, 0


class DaxWindow:
    """Implements the server's ``DaxHandler`` for one device.

    ``fs``: the FileSystem; it must implement ``open_for_mapping`` (PassthroughFs does).
    ``channel``: a :class:`~pyvirtiofsd.vhost_user.backend_channel.BackendChannel`, given
    later by the device when the front-end sends SET_BACKEND_REQ_FD.
    ``inode_policy``: ``"aligned"`` marks regular files whose size is a whole number of host
    pages with FUSE_ATTR_DAX (what a ``dax=inode`` guest then maps: QEMU can map only whole
    in-file pages), ``"never"`` marks none.
    """

    init_flags = abi.FUSE_HAS_INODE_DAX

    def __init__(self, fs, size: int, *, page_size: int | None = None, inode_policy: str = "aligned"):
        self.page_size = page_size or host_page_size()
        if size <= 0 or size % DAX_RANGE:
            raise ValueError("the cache window must be a positive multiple of 2 MiB")
        if self.page_size & (self.page_size - 1) or not 4096 <= self.page_size <= DAX_RANGE:
            raise ValueError("the host page size must be a power of two from 4 KiB to 2 MiB")
        if inode_policy not in ("aligned", "never"):
            raise ValueError(f"unknown inode policy {inode_policy!r}")
        self.fs = fs
        self.size = size
        self.inode_policy = inode_policy
        self.channel = None
        self._lock = threading.Lock()
        self._maps: list[Mapping] = []     # sorted by moffset, non-overlapping
        self._files: dict[int, _File] = {}
        self.mapped_inodes: set[int] = set()
        self.stats = {"map": 0, "unmap": 0, "map_failed": 0}

    @property
    def map_alignment(self) -> int:
        """log2 of the alignment SETUPMAPPING offsets need (FUSE_MAP_ALIGNMENT)."""
        return self.page_size.bit_length() - 1

    # -- what the device tells us ----------------------------------------------------------

    def set_channel(self, channel) -> None:
        """A new backend channel (or None): the front-end forgot every mapping."""
        with self._lock:
            self.channel = channel
            self._forget_all()

    def reset(self, unmap: bool = False) -> None:
        """DESTROY (``unmap``: ask the front-end to drop them too) or device reset."""
        with self._lock:
            if unmap:
                for m in list(self._maps):
                    self._unmap(m)
            self._forget_all()

    def _forget_all(self) -> None:
        self._maps.clear()
        for f in self._files.values():
            os.close(f.fd)
        self._files.clear()
        self.mapped_inodes.clear()

    # -- the server's DaxHandler (pyvirtiofsd.server.DaxHandler declares every method) ----

    def inode_dax(self, attr: Attr) -> bool:
        """FUSE_ATTR_DAX for this inode?  (See ``inode_policy``.)"""
        return (self.inode_policy == "aligned" and stat.S_ISREG(attr.mode) and attr.size > 0
                and attr.size % self.page_size == 0)

    def setupmapping(self, ctx: Context, nodeid: int, fh: int, foffset: int, length: int,
                     flags: int, moffset: int) -> None:
        writable = bool(flags & abi.FUSE_SETUPMAPPING_FLAG_WRITE)
        if flags & ~(abi.FUSE_SETUPMAPPING_FLAG_WRITE | abi.FUSE_SETUPMAPPING_FLAG_READ):
            raise _err(errno.EINVAL, f"unknown mapping flags {flags:#x}")
        self._check_range(moffset, length)
        if foffset % self.page_size:
            raise _err(errno.EINVAL, f"file offset {foffset:#x} is not aligned to {self.page_size}")
        with self._lock:
            channel = self._need_channel()
            f = self._file(ctx, nodeid, None if fh == NO_FH else fh, writable)
            f.users += 1  # pinned: cutting the inode's old mappings must not close it
            try:
                size = os.fstat(f.fd).st_size
                if foffset >= size:
                    raise _err(errno.EINVAL, f"file offset {foffset} is at or past end of file ({size})")
                # Everything is checked: from here on we change the window.
                for old in self._overlapping(moffset, length):
                    self._cut(old, moffset, moffset + length)
                m = Mapping(moffset, length, nodeid, foffset, writable, None if fh == NO_FH else fh)
                self._insert(m)
                self._map(m, f, size, channel)
            finally:
                f.users -= 1
                self._drop_file_if_unused(nodeid)

    def removemapping(self, ctx: Context, ranges: list[tuple[int, int]]) -> None:
        for moffset, length in ranges:
            self._check_range(moffset, length)
        with self._lock:
            self._need_channel()
            for moffset, length in ranges:
                for m in self._overlapping(moffset, length):
                    self._cut(m, moffset, moffset + length)

    # -- hooks for operations that change what a mapping may cover ---------------------

    def refresh(self, nodeid: int) -> None:
        """The file's size may have changed: re-fit its mappings to it."""
        if nodeid not in self.mapped_inodes:
            return
        with self._lock:
            f = self._files.get(nodeid)
            if f is None or self.channel is None:
                return
            size = os.fstat(f.fd).st_size
            for m in [m for m in self._maps if m.nodeid == nodeid]:
                want = self._fit(m, size)
                if want != m.mapped:
                    if m.mapped:
                        self._unmap(m)
                    try:
                        self._map_length(m, f, want, self.channel)
                    except OSError as e:
                        log.warning("could not re-fit a DAX mapping to its file", nodeid=nodeid,
                                    moffset=m.moffset, error=str(e))

    def released(self, nodeid: int, fh: int) -> None:
        """RELEASE of ``fh``: drop the mappings made through it."""
        if nodeid not in self.mapped_inodes:
            return
        with self._lock:
            for m in [m for m in self._maps if m.fh == fh and m.nodeid == nodeid]:
                self._cut(m, m.moffset, m.end)

    def forgotten(self, nodeid: int, still_known: bool) -> None:
        """FORGET: once the guest no longer knows the inode, its mappings go."""
        if still_known or nodeid not in self.mapped_inodes:
            return
        with self._lock:
            for m in [m for m in self._maps if m.nodeid == nodeid]:
                self._cut(m, m.moffset, m.end)

    # -- views for tests and stats ---------------------------------------------------------

    def mappings(self) -> list[Mapping]:
        with self._lock:
            return [dataclasses.replace(m) for m in self._maps]

    def open_files(self) -> int:
        with self._lock:
            return len(self._files)

    # -- internals (called with the lock held) ------------------------------------------------

    def _check_range(self, moffset: int, length: int) -> None:
        if length == 0:
            raise _err(errno.EINVAL, "zero-length mapping")
        if moffset % self.page_size or length % self.page_size:
            raise _err(errno.EINVAL, f"window range {moffset:#x}+{length:#x} is not aligned to {self.page_size}")
        if moffset >= self.size or length > self.size - moffset:
            raise _err(errno.EINVAL, f"window range {moffset:#x}+{length:#x} is outside the {self.size:#x}-byte window")

    def _need_channel(self):
        if self.channel is None:
            raise _err(errno.EOPNOTSUPP, "the front-end gave us no backend channel")
        return self.channel

    def _file(self, ctx: Context, nodeid: int, fh: int | None, writable: bool) -> _File:
        f = self._files.get(nodeid)
        if f is not None and (f.writable or not writable) and fh is None:
            return f
        fd, fd_writable = self.fs.open_for_mapping(ctx, nodeid, fh, writable)
        if f is not None:
            if fd_writable and not f.writable:
                os.close(f.fd)
                f.fd, f.writable = fd, True
            else:
                os.close(fd)
            return f
        f = _File(fd, fd_writable)
        self._files[nodeid] = f
        return f

    def _drop_file_if_unused(self, nodeid: int) -> None:
        f = self._files.get(nodeid)
        if f is not None and f.users == 0:
            os.close(f.fd)
            del self._files[nodeid]
            self.mapped_inodes.discard(nodeid)

    def _overlapping(self, start: int, length: int) -> list[Mapping]:
        end = start + length
        i = bisect.bisect_right([m.moffset for m in self._maps], start) - 1
        out = []
        for m in self._maps[max(i, 0):]:
            if m.moffset >= end:
                break
            if m.end > start:
                out.append(m)
        return out

    def _insert(self, m: Mapping) -> None:
        bisect.insort(self._maps, m, key=lambda x: x.moffset)
        self._files[m.nodeid].users += 1
        self.mapped_inodes.add(m.nodeid)

    def _remove(self, m: Mapping) -> None:
        del self._maps[next(i for i, x in enumerate(self._maps) if x is m)]
        f = self._files.get(m.nodeid)
        if f is not None:
            f.users -= 1
            if f.users == 0:
                self._drop_file_if_unused(m.nodeid)

    def _fit(self, m: Mapping, size: int) -> int:
        """Bytes of ``m`` the file covers, in whole host pages."""
        covered = max(0, size - m.foffset)
        covered = -(-covered // self.page_size) * self.page_size
        return min(m.length, covered)

    def _map(self, m: Mapping, f: _File, size: int, channel) -> None:
        self._map_length(m, f, self._fit(m, size), channel)

    def _map_length(self, m: Mapping, f: _File, length: int, channel) -> None:
        m.mapped = 0
        if length == 0:
            return
        try:
            channel.map(SHMID_CACHE, f.fd, m.foffset, m.moffset, length, m.writable)
        except OSError as e:
            self.stats["map_failed"] += 1
            self._remove(m)
            raise _err(errno.EIO, f"front-end did not map the range: {e}") from None
        m.mapped = length
        self.stats["map"] += 1

    def _unmap(self, m: Mapping) -> None:
        if m.mapped and self.channel is not None:
            try:
                self.channel.unmap(SHMID_CACHE, m.moffset, m.mapped)
                self.stats["unmap"] += 1
            except OSError as e:
                log.error("front-end did not unmap a DAX range", moffset=m.moffset, error=str(e))
        m.mapped = 0

    def _cut(self, m: Mapping, start: int, end: int) -> None:
        """Remove [start, end) from mapping m: unmap it whole, re-map what survives."""
        self._unmap(m)
        pieces = []
        if m.moffset < start:
            pieces.append(Mapping(m.moffset, start - m.moffset, m.nodeid, m.foffset, m.writable, m.fh))
        if end < m.end:
            pieces.append(Mapping(end, m.end - end, m.nodeid, m.foffset + (end - m.moffset),
                                  m.writable, m.fh))
        for piece in pieces:  # before m goes, so the file's fd stays open for them
            self._insert(piece)
        self._remove(m)
        if pieces:
            f = self._files[m.nodeid]
            size = os.fstat(f.fd).st_size
            for piece in pieces:
                try:
                    self._map(piece, f, size, self.channel)
                except OSError as e:
                    log.error("could not re-map the surviving part of a DAX mapping",
                              moffset=piece.moffset, error=str(e))
