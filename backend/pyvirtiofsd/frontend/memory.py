"""Guest RAM for the front-end: a memfd we map ourselves and share with the back-end, and
an allocator for request buffers inside it.

Like QEMU, the RAM can be split into several regions that alias one memfd at different
offsets (and different guest-physical addresses), so back-ends see a realistic table.
"""
from __future__ import annotations

import bisect
import mmap
import os
import threading

from .._testkit import ffi
from ..vhost_user.codec import MemRegion


class GuestRAM:
    """``size`` bytes of shared memory.  ``regions`` describes how guest-physical space
    maps onto it: a list of (guest_phys_addr, memfd_offset, size)."""

    def __init__(self, size: int, regions: list[tuple[int, int, int]] | None = None,
                 name: str = "pyvirtiofsd-guest-ram"):
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._cbuf = ffi.from_buffer(self.map)
        self.host_base = int(ffi.cast("uintptr_t", self._cbuf))
        self.layout = regions or [(0, 0, size)]
        for gpa, off, sz in self.layout:
            if off + sz > size:
                raise ValueError("region past the end of guest RAM")

    def mem_regions(self) -> list[MemRegion]:
        """The regions as SET_MEM_TABLE describes them (userspace_addr = our mapping)."""
        return [MemRegion(gpa, sz, self.host_base + off, off) for gpa, off, sz in self.layout]

    def offset(self, gpa: int, size: int = 1) -> int:
        """memfd offset of a guest-physical range that lies inside one region."""
        for rgpa, off, sz in self.layout:
            if rgpa <= gpa and gpa + size <= rgpa + sz:
                return off + (gpa - rgpa)
        raise ValueError(f"guest range {gpa:#x}+{size} is not in RAM")

    def gpa(self, offset: int) -> int:
        for rgpa, off, sz in self.layout:
            if off <= offset < off + sz:
                return rgpa + (offset - off)
        raise ValueError(f"offset {offset:#x} is not in any region")

    def host(self, gpa: int, size: int = 1) -> int:
        return self.host_base + self.offset(gpa, size)

    def read(self, gpa: int, size: int) -> bytes:
        off = self.offset(gpa, size)
        return self.map[off:off + size]

    def write(self, gpa: int, data: bytes) -> None:
        off = self.offset(gpa, len(data))
        self.map[off:off + len(data)] = data

    def view(self, gpa: int, size: int) -> memoryview:
        off = self.offset(gpa, size)
        return memoryview(self.map)[off:off + size]

    def close(self) -> None:
        if self.fd < 0:
            return
        self._cbuf = None
        try:
            self.map.close()
        except BufferError:
            pass  # a view is still alive; the mapping goes with the last reference
        os.close(self.fd)
        self.fd = -1


class Allocator:
    """First-fit allocator of guest-physical ranges inside one region, with coalescing.
    Thread-safe; alignment 64 bytes (16 is all a descriptor table needs)."""

    ALIGN = 64

    def __init__(self, start: int, size: int):
        self._lock = threading.Lock()
        self._free: list[tuple[int, int]] = [(start, size)]  # sorted (addr, size)
        self.start, self.size = start, size

    def alloc(self, size: int) -> int:
        size = max(self.ALIGN, (size + self.ALIGN - 1) // self.ALIGN * self.ALIGN)
        with self._lock:
            for i, (addr, sz) in enumerate(self._free):
                if sz >= size:
                    if sz == size:
                        del self._free[i]
                    else:
                        self._free[i] = (addr + size, sz - size)
                    return addr
        raise MemoryError(f"guest RAM exhausted (wanted {size} bytes)")

    def free(self, addr: int, size: int) -> None:
        size = max(self.ALIGN, (size + self.ALIGN - 1) // self.ALIGN * self.ALIGN)
        with self._lock:
            i = bisect.bisect_left(self._free, (addr, 0))
            self._free.insert(i, (addr, size))
            # Merge with the next and then the previous extent.
            if i + 1 < len(self._free) and addr + size == self._free[i + 1][0]:
                self._free[i] = (addr, size + self._free[i + 1][1])
                del self._free[i + 1]
            if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == addr:
                self._free[i - 1] = (self._free[i - 1][0], self._free[i - 1][1] + self._free[i][1])
                del self._free[i]

    def free_bytes(self) -> int:
        with self._lock:
            return sum(sz for _, sz in self._free)
