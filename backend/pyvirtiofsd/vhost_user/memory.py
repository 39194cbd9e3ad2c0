"""The guest memory table the front-end shares with us (SET_MEM_TABLE, or ADD_MEM_REG /
REM_MEM_REG once CONFIGURE_MEM_SLOTS is negotiated).

Each change builds a new immutable C table (``struct pvfs_mem``) that shares the region
mappings of the old one; see cext/mem.h for why tables are reference counted.
"""
from __future__ import annotations

import errno
import os

from .._cext import ffi, lib
from .codec import MemRegion
from .protocol import MAX_MEM_SLOTS


class GuestMemoryError(OSError):
    """A region that cannot be mapped or a table that does not make sense."""


class _Region:
    __slots__ = ("info", "ptr")

    def __init__(self, info: MemRegion, ptr):
        self.info = info
        self.ptr = ptr

    def matches(self, other: MemRegion) -> bool:
        return (self.info.guest_phys_addr == other.guest_phys_addr
                and self.info.memory_size == other.memory_size
                and self.info.userspace_addr == other.userspace_addr)


def map_region(info: MemRegion, fd: int) -> _Region:
    """mmap one region (the fd is not kept: the caller closes it)."""
    c_info = ffi.new("struct pvfs_region_info *", {
        "gpa": info.guest_phys_addr, "size": info.memory_size,
        "uva": info.userspace_addr, "mmap_offset": info.mmap_offset})
    err = ffi.new("int *")
    ptr = lib.pvfs_region_map(fd, c_info, err)
    if ptr == ffi.NULL:
        raise GuestMemoryError(-err[0], f"cannot map region {info}: {os.strerror(-err[0])}")
    return _Region(info, ptr)


class GuestMemory:
    """The current table plus the regions it is made of.  Not thread-safe: the vhost-user
    control thread is its only user; virtqueues get the C table through ``table``."""

    def __init__(self) -> None:
        self._regions: list[_Region] = []
        self.table = ffi.NULL  # struct pvfs_mem *, or NULL before the first table
        self._rebuild()

    @property
    def regions(self) -> list[MemRegion]:
        return [r.info for r in self._regions]

    def _rebuild(self) -> None:
        err = ffi.new("int *")
        ptrs = ffi.new("struct pvfs_region *[]", [r.ptr for r in self._regions] or 1)
        table = lib.pvfs_mem_new(ptrs, len(self._regions), err)
        if table == ffi.NULL:
            raise GuestMemoryError(-err[0], "memory regions overlap or are too many")
        old, self.table = self.table, table
        if old != ffi.NULL:
            lib.pvfs_mem_unref(old)

    def set_table(self, regions: list[MemRegion], fds: list[int]) -> None:
        """Replace the whole table (SET_MEM_TABLE).  On failure the old table stays."""
        if len(regions) != len(fds):
            raise GuestMemoryError(errno.EINVAL, f"{len(regions)} regions but {len(fds)} fds")
        new: list[_Region] = []
        try:
            for info, fd in zip(regions, fds):
                new.append(map_region(info, fd))
        except Exception:
            for r in new:
                lib.pvfs_region_unref(r.ptr)
            raise
        old = self._regions
        self._regions = new
        try:
            self._rebuild()
        except Exception:
            self._regions = old
            for r in new:
                lib.pvfs_region_unref(r.ptr)
            raise
        for r in old:
            lib.pvfs_region_unref(r.ptr)

    def add(self, info: MemRegion, fd: int) -> None:
        """ADD_MEM_REG."""
        if len(self._regions) >= MAX_MEM_SLOTS:
            raise GuestMemoryError(errno.ENOSPC, "no free memory slot")
        region = map_region(info, fd)
        self._regions.append(region)
        try:
            self._rebuild()
        except Exception:
            self._regions.pop()
            lib.pvfs_region_unref(region.ptr)
            raise

    def remove(self, info: MemRegion) -> None:
        """REM_MEM_REG: the region must match one we have (address, size, user address)."""
        for i, r in enumerate(self._regions):
            if r.matches(info):
                del self._regions[i]
                self._rebuild()
                lib.pvfs_region_unref(r.ptr)
                return
        raise GuestMemoryError(errno.ENOENT, f"no region matches {info}")

    def clear(self) -> None:
        for r in self._regions:
            lib.pvfs_region_unref(r.ptr)
        self._regions = []
        self._rebuild()

    def close(self) -> None:
        self.clear()
        if self.table != ffi.NULL:
            lib.pvfs_mem_unref(self.table)
            self.table = ffi.NULL

    def read(self, gpa: int, size: int) -> bytes:
        """Copy guest bytes (for tests and diagnostics)."""
        buf = bytearray(size)
        if lib.pvfs_mem_read(self.table, gpa, ffi.from_buffer(buf), size) < 0:
            raise GuestMemoryError(errno.EFAULT, f"guest range {gpa:#x}+{size} is not mapped")
        return bytes(buf)
