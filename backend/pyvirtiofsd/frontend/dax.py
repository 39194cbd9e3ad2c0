"""The VMM's half of DAX: a cache window and the backend-channel server that maps file
ranges into it when the back-end asks — what a DAX-capable VMM (QEMU 11.1's
vhost-user-test-device, crosvm) does, without a VM.

The window is a reserved range of our address space.  A SHMEM_MAP request mmaps the fd it
carries there with MAP_FIXED|MAP_SHARED, so the window shares the host page cache with
every other mapping of the file: what makes DAX coherent.  SHMEM_UNMAP puts inaccessible
anonymous memory back.  Like QEMU 11.1 we refuse overlapping maps, unmaps that do not name
a whole earlier mapping, and ranges past the end of the file, and (optionally) announce
each live mapping to the back-end as a memory region, so requests whose buffers lie in the
window can be served.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import socket
import threading

from pyvirtiofsd import logs

from .._testkit import ffi, lib
from ..vhost_user.backend_channel import (
    LEGACY_FLAG_MAP_W,
    LEGACY_FS_MAP,
    LEGACY_FS_MSG,
    LEGACY_FS_SLOTS,
    LEGACY_FS_UNMAP,
)
from ..vhost_user.codec import MemRegion, ShmemMap, SingleMemRegion, U64, encode_reply
from ..vhost_user.connection import Connection, ConnectionClosed
from ..vhost_user.protocol import BackendReq, FrontendReq, SHMEM_MAP_RW

log = logs.get_logger("pyvirtiofsd.frontend.dax")

WINDOW_GPA = 1 << 40  # where the window sits in guest-physical space (like a 64-bit BAR)


@dataclasses.dataclass
class WindowMapping:
    offset: int
    length: int
    fd: int          # our own dup of the back-end's fd
    fd_offset: int
    writable: bool


class CacheWindow:
    """``size`` bytes of reserved address space (shared-memory region ``shmid``)."""

    def __init__(self, size: int, shmid: int = 0, gpa: int = WINDOW_GPA):
        err = ffi.new("int *")
        self.base = lib.pvfs_window_reserve(size, err)
        if not self.base:
            raise OSError(-err[0], "cannot reserve the cache window")
        self.size = size
        self.shmid = shmid
        self.gpa = gpa
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.mappings: dict[int, WindowMapping] = {}
        self._lock = threading.Lock()

    def _check(self, offset: int, length: int) -> None:
        if length == 0 or offset % self.page or length % self.page:
            raise OSError(errno.EINVAL, f"range {offset:#x}+{length:#x} is not page aligned")
        if offset >= self.size or length > self.size - offset:
            raise OSError(errno.EINVAL, f"range {offset:#x}+{length:#x} is outside the window")

    def map(self, offset: int, length: int, fd: int, fd_offset: int, writable: bool,
            strict_eof: bool = True) -> WindowMapping:
        self._check(offset, length)
        with self._lock:
            for m in self.mappings.values():
                if m.offset < offset + length and offset < m.offset + m.length:
                    raise OSError(errno.EEXIST, f"range {offset:#x}+{length:#x} overlaps a mapping")
            if strict_eof and os.fstat(fd).st_size < fd_offset + length:
                # What QEMU says: "backing store size ... is too small".  Pages past EOF
                # would SIGBUS whoever touches them.
                raise OSError(errno.EINVAL, "range extends past the end of the file")
            mine = os.dup(fd)
            rc = lib.pvfs_window_map(self.base + offset, length, int(writable), mine, fd_offset)
            if rc < 0:
                os.close(mine)
                raise OSError(-rc, os.strerror(-rc))
            m = WindowMapping(offset, length, mine, fd_offset, writable)
            self.mappings[offset] = m
            return m

    def unmap(self, offset: int, length: int) -> WindowMapping:
        with self._lock:
            m = self.mappings.get(offset)
            if m is None or m.length != length:
                raise OSError(errno.ENOENT, f"no mapping is exactly {offset:#x}+{length:#x}")
            rc = lib.pvfs_window_unmap(self.base + offset, length)
            if rc < 0:
                raise OSError(-rc, os.strerror(-rc))
            del self.mappings[offset]
        os.close(m.fd)
        return m

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the window, as the guest would load them (EFAULT where unmapped)."""
        buf = bytearray(length)
        n = lib.pvfs_window_read(self.base + offset, ffi.from_buffer(buf), length)
        if n < 0:
            raise OSError(-n, "window range is not mapped")
        return bytes(buf[:n])

    def write(self, offset: int, data: bytes) -> None:
        """Store into the window, as the guest would (EFAULT where unmapped or read-only)."""
        n = lib.pvfs_window_write(self.base + offset, data, len(data))
        if n < 0:
            raise OSError(-n, "window range is not mapped writable")

    def view(self, offset: int, length: int) -> memoryview:
        """Direct access (a fault here kills the process: use read/write for checks)."""
        return memoryview(ffi.buffer(ffi.cast("char *", self.base + offset), length))

    def close(self) -> None:
        with self._lock:
            for m in self.mappings.values():
                os.close(m.fd)
            self.mappings.clear()
            if self.base:
                lib.pvfs_window_release(self.base, self.size)
                self.base = 0


class BackendChannelServer(threading.Thread):
    """Serves the back-end's requests on the backend channel for one window.

    ``announce``: after each map/unmap, send ADD_MEM_REG/REM_MEM_REG for the range on the
    main socket and wait for the back-end's ack *before* answering the map, as QEMU 11.1
    does (the deadlock trap a back-end must survive), so request buffers inside the window
    resolve through the back-end's memory table.
    """

    def __init__(self, frontend, window: CacheWindow, *, announce: bool = False,
                 strict_eof: bool = True, refuse: bool = False):
        super().__init__(name="backend-channel", daemon=True)
        self.fe = frontend
        self.window = window
        self.conn = Connection(frontend.backend_sock)
        self.announce = announce
        self.strict_eof = strict_eof
        self.refuse = refuse  # answer every request with failure (tests)
        self.requests: list[tuple[str, int, int]] = []  # (name, offset, length) served
        self.errors: list[str] = []

    def run(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (ConnectionClosed, OSError):
                return
            try:
                ok = self._handle(msg)
            except Exception as e:  # noqa: BLE001 - any failure is a refusal, never a hang
                self.errors.append(str(e))
                log.info("refused a backend request", request=msg.name(True), reason=str(e))
                ok = False
            finally:
                for fd in msg.fds:
                    os.close(fd)
            if msg.need_reply:
                try:
                    self.conn.send(encode_reply(msg.request, U64(0 if ok else 1).pack()))
                except OSError:
                    return

    def _handle(self, msg) -> bool:
        if self.refuse:
            raise OSError(errno.EPERM, "refusing by request of the test")
        if msg.request in (BackendReq.SHMEM_MAP, BackendReq.SHMEM_UNMAP):
            body = ShmemMap.unpack(msg.payload)
            if body.shmid != self.window.shmid:
                raise OSError(errno.EINVAL, f"no shared-memory region {body.shmid}")
            if msg.request == BackendReq.SHMEM_MAP:
                self._map(msg, body.shm_offset, body.len, body.fd_offset, bool(body.flags & SHMEM_MAP_RW))
            else:
                self._unmap(body.shm_offset, body.len)
            return True
        if msg.request in (LEGACY_FS_MAP, LEGACY_FS_UNMAP):
            values = LEGACY_FS_MSG.unpack_from(msg.payload)
            n = LEGACY_FS_SLOTS
            for i in range(n):
                fd_off, cache_off, length, flags = values[i], values[n + i], values[2 * n + i], values[3 * n + i]
                if length == 0:
                    continue
                if msg.request == LEGACY_FS_MAP:
                    self._map(msg, cache_off, length, fd_off, bool(flags & LEGACY_FLAG_MAP_W))
                else:
                    self._unmap(cache_off, length)
            return True
        raise OSError(errno.ENOSYS, f"unsupported backend request {msg.request}")

    def _map(self, msg, offset: int, length: int, fd_offset: int, writable: bool) -> None:
        if len(msg.fds) != 1:
            raise OSError(errno.EBADF, f"map request with {len(msg.fds)} fds")
        m = self.window.map(offset, length, msg.fds[0], fd_offset, writable, self.strict_eof)
        self.requests.append(("map", offset, length))
        if self.announce:
            region = self._region(m)
            try:
                self.fe.request(FrontendReq.ADD_MEM_REG, SingleMemRegion(region).pack(), [m.fd],
                                need_reply=True)
            except Exception:
                self.window.unmap(offset, length)  # all or nothing
                raise

    def _unmap(self, offset: int, length: int) -> None:
        m = self.window.unmap(offset, length)
        self.requests.append(("unmap", offset, length))
        if self.announce:
            self.fe.request(FrontendReq.REM_MEM_REG, SingleMemRegion(self._region(m)).pack(),
                            need_reply=True)

    def _region(self, m: WindowMapping) -> MemRegion:
        return MemRegion(self.window.gpa + m.offset, m.length, self.window.base + m.offset,
                         m.fd_offset)

    def stop(self) -> None:
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.join(5)
