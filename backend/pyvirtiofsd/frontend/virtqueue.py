"""The driver's side of one split virtqueue, as a guest's virtio driver would run it:
rings in shared guest RAM, a kick eventfd to the back-end, a call eventfd back."""
from __future__ import annotations

import os
import threading

from .._testkit import ffi, lib
from .memory import Allocator, GuestRAM

# Descriptor flags, for tests that write raw descriptors.
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4


class DriverQueue:
    def __init__(self, index: int, size: int, ram: GuestRAM, alloc: Allocator, event_idx: bool):
        if size <= 0 or size & (size - 1):
            raise ValueError("queue size must be a power of two")
        self.index = index
        self.size = size
        self.ram = ram
        self.alloc = alloc
        self.event_idx = event_idx
        self.desc = alloc.alloc(16 * size)
        self.avail = alloc.alloc(6 + 2 * size)
        self.used = alloc.alloc(6 + 8 * size)
        self._drv = ffi.gc(lib.pvfs_drv_new(size, ram.host(self.desc, 16 * size),
                                            ram.host(self.avail, 6 + 2 * size),
                                            ram.host(self.used, 6 + 8 * size), int(event_idx)),
                           lib.pvfs_drv_free)
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.lock = threading.Lock()
        self._indirect: dict[int, tuple[int, int]] = {}  # head -> indirect table allocation
        self._id = ffi.new("uint32_t *")
        self._len = ffi.new("uint32_t *")

    # Addresses as SET_VRING_ADDR wants them: front-end virtual addresses.
    def addr_uva(self) -> tuple[int, int, int]:
        return (self.ram.host(self.desc), self.ram.host(self.used), self.ram.host(self.avail))

    def add(self, out: list[tuple[int, int]], in_: list[tuple[int, int]], indirect: bool = False) -> int:
        """Make a chain available: ``out`` device-readable (gpa, len) buffers, then ``in_``
        device-writable ones.  Returns the head id; raises BlockingIOError if the ring is full."""
        bufs = out + in_
        addrs = ffi.new("uint64_t[]", [a for a, _ in bufs])
        lens = ffi.new("uint32_t[]", [n for _, n in bufs])
        table_gpa = table_host = 0
        if indirect:
            table_gpa = self.alloc.alloc(16 * len(bufs))
            table_host = self.ram.host(table_gpa, 16 * len(bufs))
        with self.lock:
            head = lib.pvfs_drv_add(self._drv, addrs, lens, len(out), len(in_), table_gpa, table_host)
            if head >= 0 and indirect:
                self._indirect[head] = (table_gpa, 16 * len(bufs))
        if head < 0:
            if indirect:
                self.alloc.free(table_gpa, 16 * len(bufs))
            raise BlockingIOError("virtqueue full")
        return head

    def kick(self, force: bool = False) -> None:
        with self.lock:
            needed = lib.pvfs_drv_kick_needed(self._drv)
        if needed or force:
            os.eventfd_write(self.kick_fd, 1)

    def get_used(self) -> tuple[int, int] | None:
        with self.lock:
            if not lib.pvfs_drv_get_used(self._drv, self._id, self._len):
                return None
            head, length = self._id[0], self._len[0]
            table = self._indirect.pop(head, None)
        if table:
            self.alloc.free(*table)
        return head, length

    def wait(self, timeout: float | None) -> bool:
        """Wait for an interrupt (the call eventfd).  False on timeout."""
        with self.lock:
            if lib.pvfs_drv_enable_cb(self._drv):
                return True
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        rc = lib.pvfs_eventfd_wait(self.call_fd, ms)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        return rc == 1

    @property
    def num_free(self) -> int:
        return lib.pvfs_drv_num_free(self._drv)

    # Raw access for hostile-input tests.
    def write_desc(self, i: int, addr: int, length: int, flags: int, next_: int) -> None:
        lib.pvfs_drv_write_desc(self._drv, i, addr, length, flags, next_)

    def publish_head(self, head: int) -> None:
        with self.lock:
            lib.pvfs_drv_publish_head(self._drv, head)

    def used_idx(self) -> int:
        return lib.pvfs_drv_used_idx(self._drv)

    def free_rings(self) -> None:
        """Give the rings' guest memory back (after the device stopped using them)."""
        self.alloc.free(self.desc, 16 * self.size)
        self.alloc.free(self.avail, 6 + 2 * self.size)
        self.alloc.free(self.used, 6 + 8 * self.size)

    def close(self) -> None:
        for fd in (self.kick_fd, self.call_fd):
            try:
                os.close(fd)
            except OSError:
                pass
