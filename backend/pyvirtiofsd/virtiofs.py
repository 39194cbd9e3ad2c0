"""The virtio-fs device (virtio device id 26) on top of the generic vhost-user back-end:
queue layout, config space, and how FUSE requests reach the server.

Queue 0 is hiprio (FORGET, BATCH_FORGET, INTERRUPT: served inline, they never block);
queues 1..n are request queues whose requests go to a pool of worker threads, so one slow
FSYNC does not hold up a GETATTR behind it.
"""
from __future__ import annotations

import queue
import struct
import threading

import structlog

from .fuse.request import FuseRequest
from .vhost_user.backend_channel import BackendChannel
from .vhost_user.device import VhostUserDevice
from .vhost_user.protocol import SHMEM_BIT_DEFAULT, ProtocolFeature as P, shmem_bit

log = structlog.get_logger("pyvirtiofsd.virtiofs")

VIRTIO_ID_FS = 26
TAG_SIZE = 36
HIPRIO_QUEUE = 0


def config_space(tag: str, num_request_queues: int) -> bytes:
    """virtio_fs_config: tag (UTF-8, NUL-padded, 36 bytes), num_request_queues (le32),
    notify_buf_size (le32, only meaningful with VIRTIO_FS_F_NOTIFICATION: 0)."""
    raw = tag.encode()
    if not raw or len(raw) > TAG_SIZE:
        raise ValueError(f"the tag must be 1 to {TAG_SIZE} bytes of UTF-8")
    return raw.ljust(TAG_SIZE, b"\0") + struct.pack("<II", num_request_queues, 0)


class WorkerPool:
    """Plain threads on a queue: cheaper per request than concurrent.futures."""

    def __init__(self, size: int, serve):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._serve = serve
        self._threads = [threading.Thread(target=self._run, name=f"fuse-worker-{i}", daemon=True)
                         for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, req: FuseRequest) -> None:
        self._queue.put(req)

    def _run(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            self._serve(req)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)


class VirtioFsDevice(VhostUserDevice):
    def __init__(self, server, *, tag: str | None = None, num_request_queues: int = 1,
                 thread_pool_size: int = 8, dax=None, shmem_bit_number: int = SHMEM_BIT_DEFAULT,
                 dax_protocol: str = "shmem"):
        if num_request_queues < 1:
            raise ValueError("at least one request queue")
        self.server = server
        self.tag = tag
        self.num_request_queues = num_request_queues
        self.num_queues = 1 + num_request_queues
        self.protocol_features = int(P.BACKEND_REQ | P.BACKEND_SEND_FD)
        if tag is not None:
            config_space(tag, num_request_queues)  # validate early
            # Only with a tag: QEMU's vhost-user-fs-pci takes the tag from its own command
            # line, but generic front-ends (vhost-user-test-device) read it from us.
            self.protocol_features |= int(P.CONFIG)
        self.pool = WorkerPool(thread_pool_size, server.handle) if thread_pool_size > 0 else None
        # DAX: a cache window (shared-memory region 0) mapped through the backend channel.
        self.dax = dax
        self.dax_protocol = dax_protocol
        self._shmem = shmem_bit(shmem_bit_number)
        if dax is not None:
            self.protocol_features |= int(P.REPLY_ACK)
            if dax_protocol == "shmem":
                self.protocol_features |= self._shmem
        self._dax_usable = False

    def acked_protocol_features(self, features: int) -> None:
        need = int(P.BACKEND_REQ | P.BACKEND_SEND_FD | P.REPLY_ACK)
        if self.dax_protocol == "shmem":
            need |= self._shmem
        self._dax_usable = self.dax is not None and features & need == need
        if self.dax is not None and not self._dax_usable:
            log.warning("the front-end cannot map a DAX window: SETUPMAPPING will fail",
                        missing=hex(need & ~features))

    def shmem_sizes(self) -> list[int]:
        return [self.dax.size] if self.dax is not None else []

    def set_backend_channel(self, channel) -> None:
        if self.dax is None:
            return
        usable = channel is not None and self._dax_usable
        self.dax.set_channel(BackendChannel(channel, self.dax_protocol) if usable else None)

    def get_config(self, offset: int, size: int) -> bytes:
        if self.tag is None:
            raise ValueError("no tag configured (--tag)")
        space = config_space(self.tag, self.num_request_queues)
        if offset > len(space) or size == 0:
            raise ValueError(f"config read {offset}+{size} outside the {len(space)}-byte space")
        return space[offset:offset + size].ljust(size, b"\0")

    def handler(self, queue_index: int):
        if queue_index == HIPRIO_QUEUE or self.pool is None:
            return self.server.handle
        return self.pool.submit

    def reset(self) -> None:
        reset = getattr(self.server, "reset", None)
        if reset is not None:
            reset()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
