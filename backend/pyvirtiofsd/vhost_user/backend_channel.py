"""Back-end → front-end requests on the socket the front-end gave us with
SET_BACKEND_REQ_FD: the shared-memory map/unmap requests DAX needs.

Every request goes out with NEED_REPLY and waits for the front-end's u64 answer, so the
back-end knows whether the front-end really mapped the range (and stays in step with
front-ends that answer even when not asked to).  One request is in flight at a time.

The front-end may, before it answers, send us memory-table updates on the *main* socket
and wait for our acks (QEMU does after each map).  The main socket is served by its own
thread, never by a thread that waits here, so that cannot deadlock.
"""
from __future__ import annotations

import os
import socket
import struct
import threading

from .codec import CodecError, Message, ShmemMap, U64, encode
from .connection import Connection, ConnectionClosed
from .protocol import FLAG_NEED_REPLY, VERSION, BackendReq

# The older virtio-fs development dialect (QEMU's virtio-fs-dev branch and the C virtiofsd
# that went with it): VhostUserFSSlaveMsg with up to 8 ranges per message.
LEGACY_FS_MAP = 6
LEGACY_FS_UNMAP = 7
LEGACY_FS_SLOTS = 8
LEGACY_FS_MSG = struct.Struct("<8Q8Q8Q8Q")  # fd_offset[8], cache_offset[8], len[8], flags[8]
LEGACY_FLAG_MAP_R = 1
LEGACY_FLAG_MAP_W = 2


class ChannelError(OSError):
    """The front-end refused a request, or the channel is gone."""


class BackendChannel:
    """``dialect``: ``"shmem"`` (VHOST_USER_BACKEND_SHMEM_MAP/UNMAP, ids 9/10: QEMU 11.1,
    crosvm, alioth) or ``"legacy-fs"`` (FS_MAP/FS_UNMAP, ids 6/7, never upstream)."""

    def __init__(self, conn: Connection, dialect: str = "shmem", timeout: float = 30.0):
        if dialect not in ("shmem", "legacy-fs"):
            raise ValueError(f"unknown backend-channel dialect {dialect!r}")
        self.conn = conn
        self.dialect = dialect
        self.timeout = timeout
        self._lock = threading.Lock()
        self.requests_sent = 0

    def _call(self, request: int, payload: bytes, fds: list[int]) -> None:
        with self._lock:
            try:
                self.conn.sock.settimeout(self.timeout)
                self.conn.send(encode(request, payload, VERSION | FLAG_NEED_REPLY), fds)
                self.requests_sent += 1
                reply: Message = self.conn.recv()
            except (ConnectionClosed, OSError, CodecError) as e:
                raise ChannelError(5, f"backend channel failed: {e}") from None
            for fd in reply.fds:
                os.close(fd)
            if not reply.is_reply or reply.request != request:
                raise ChannelError(5, f"backend channel out of step: got request {reply.request}")
            value = U64.unpack(reply.payload).value
            if value != 0:
                raise ChannelError(5, f"front-end refused {reply.name(backend_channel=True)} ({value})")

    def map(self, shmid: int, fd: int, fd_offset: int, shm_offset: int, length: int,
            writable: bool) -> None:
        if self.dialect == "shmem":
            body = ShmemMap(shmid, fd_offset, shm_offset, length, 1 if writable else 0)
            self._call(BackendReq.SHMEM_MAP, body.pack(), [fd])
        else:
            flags = LEGACY_FLAG_MAP_R | (LEGACY_FLAG_MAP_W if writable else 0)
            self._call(LEGACY_FS_MAP, _legacy(fd_offset, shm_offset, length, flags), [fd])

    def unmap(self, shmid: int, shm_offset: int, length: int) -> None:
        if self.dialect == "shmem":
            self._call(BackendReq.SHMEM_UNMAP, ShmemMap(shmid, 0, shm_offset, length, 0).pack(), [])
        else:
            self._call(LEGACY_FS_UNMAP, _legacy(0, shm_offset, length, 0), [])

    def close(self) -> None:
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()


def _legacy(fd_offset: int, cache_offset: int, length: int, flags: int) -> bytes:
    """One range in slot 0 of a VhostUserFSSlaveMsg; unused slots have length 0."""
    pad = [0] * (LEGACY_FS_SLOTS - 1)
    return LEGACY_FS_MSG.pack(fd_offset, *pad, cache_offset, *pad, length, *pad, flags, *pad)
