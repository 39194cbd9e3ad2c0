"""The VMM's half of vhost-user: connect to a back-end's socket, negotiate, share guest
RAM, set up virtqueues — what QEMU does for ``-device vhost-user-fs-pci`` — with no VM.

Works with any vhost-user-fs back-end (ours, the C virtiofsd, the Rust virtiofsd).
"""
from __future__ import annotations

import mmap
import os
import socket
import struct
import threading
import time

from ..vhost_user.codec import (
    CodecError,
    Config,
    Message,
    ShmemConfig,
    SingleMemRegion,
    MemTable,
    U64,
    VringAddr,
    VringFd,
    VringState,
    encode,
)
from ..vhost_user.connection import Connection
from ..vhost_user.protocol import (
    FLAG_NEED_REPLY,
    VERSION,
    VHOST_VRING_F_LOG,
    FrontendReq as R,
    ProtocolFeature as P,
    VirtioFeature as V,
)
from .memory import Allocator, GuestRAM
from .virtqueue import DriverQueue

# Requests whose reply carries a body.
_REPLIES = {R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_VRING_BASE, R.GET_QUEUE_NUM,
            R.GET_CONFIG, R.GET_MAX_MEM_SLOTS, R.GET_STATUS, R.GET_SHMEM_CONFIG,
            R.SET_LOG_BASE}  # we send SET_LOG_BASE only with LOG_SHMFD, which makes it answer

LOG_PAGE = 4096  # one bit of dirty log per 4 KiB page of guest-physical address space


class BackendError(RuntimeError):
    """The back-end refused or broke a request."""


def connect_unix(path: str, timeout: float = 10.0) -> socket.socket:
    """Connect, retrying while the back-end is still starting up."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class VhostUserFrontend:
    """One front-end session.  ``connect()`` does the whole set-up; ``queues`` are then
    running (started and enabled) and ready for :class:`~.fuse_client.FuseClient`."""

    # Protocol features we use when the back-end offers them.
    WANT_PROTOCOL = int(P.MQ | P.REPLY_ACK | P.CONFIG | P.CONFIGURE_MEM_SLOTS | P.RESET_DEVICE
                        | P.BACKEND_REQ | P.BACKEND_SEND_FD
                        | P.DEVICE_STATE)   # as QEMU >= 8.2: a session may move (migrate.py)

    def __init__(self, socket_path: str | None = None, *, sock: socket.socket | None = None,
                 ram_size: int = 64 << 20, ram_layout: list[tuple[int, int, int]] | None = None,
                 queue_size: int = 128, num_queues: int | None = None, event_idx: bool = True,
                 want_protocol: int | None = None, use_mem_slots: bool = True,
                 backend_channel: bool = False, dax: bool = False, shmem_bit: int = 22,
                 dax_protocol: str = "shmem", announce_window: bool = True,
                 strict_eof: bool = True, dirty_log: bool = False):
        self.socket_path = socket_path
        self._sock = sock
        self.ram = GuestRAM(ram_size, ram_layout)
        self.queue_size = queue_size
        self.num_queues = num_queues
        self.event_idx = event_idx
        self.want_protocol = self.WANT_PROTOCOL if want_protocol is None else want_protocol
        self.use_mem_slots = use_mem_slots
        self.want_backend_channel = backend_channel
        # Rings and buffers are allocated in the largest region.
        gpa0, _, size0 = max(self.ram.layout, key=lambda r: r[2])
        self.alloc = Allocator(gpa0, size0)
        self.conn: Connection | None = None
        self.features = 0
        self.protocol_features = 0
        self.queues: list[DriverQueue] = []
        self.backend_sock: socket.socket | None = None  # our end of SET_BACKEND_REQ_FD
        self._lock = threading.Lock()  # one request/reply at a time on the main socket
        # DAX: a cache window served from the backend channel (see frontend/dax.py).
        self.want_dax = dax
        self.shmem_feature = 1 << shmem_bit
        self.dax_protocol = dax_protocol
        self.announce_window = announce_window
        self.strict_eof = strict_eof
        if dax:
            self.want_backend_channel = True
            if dax_protocol == "shmem":
                self.want_protocol |= self.shmem_feature
        self.window = None
        self.channel_server = None
        # Dirty logging (migration): ask for LOG_SHMFD; start_dirty_log shares the log.
        if dirty_log:
            self.want_protocol |= int(P.LOG_SHMFD)
        self.log_fd = -1
        self.log_map: mmap.mmap | None = None
        self.log_offset = 0

    # -- messages -------------------------------------------------------------------------

    def request(self, req: int, payload: bytes = b"", fds=(), need_reply: bool = False) -> bytes | None:
        """Send one message; return the reply payload if the message has one (or asked
        for an ack, in which case a non-zero ack raises BackendError)."""
        ack = need_reply and bool(self.protocol_features & P.REPLY_ACK) and req not in _REPLIES
        flags = VERSION | (FLAG_NEED_REPLY if ack else 0)
        with self._lock:
            self.conn.send(encode(req, payload, flags), list(fds))
            if req not in _REPLIES and not ack:
                return None
            reply = self.conn.recv()
        for fd in reply.fds:
            os.close(fd)
        if reply.request != req or not reply.is_reply:
            raise CodecError(f"reply to {Message(req).name()} came back as request {reply.request}")
        if ack:
            if U64.unpack(reply.payload).value != 0:
                raise BackendError(f"back-end refused {Message(req).name()}")
            return None
        return reply.payload

    def get_u64(self, req: int) -> int:
        return U64.unpack(self.request(req)).value

    # -- set-up ---------------------------------------------------------------------------

    def connect(self) -> VhostUserFrontend:
        sock = self._sock or connect_unix(self.socket_path)
        self.conn = Connection(sock)
        return self._set_up()

    def restart(self) -> VhostUserFrontend:
        """What a VMM does when its guest reboots: stop every ring, reset the device
        (RESET_DEVICE, or RESET_OWNER without it), and set the device up again over the same
        connection: new rings, the backend channel and the DAX window.  The memory table
        stays, as with QEMU: a reset does not unplug the guest's RAM."""
        for q in self.queues:
            self.stop_queue(q.index)
            q.close()
            q.free_rings()
        self.queues = []
        self._close_window()
        reset = R.RESET_DEVICE if self.protocol_features & P.RESET_DEVICE else R.RESET_OWNER
        self.request(reset, need_reply=bool(self.protocol_features & P.REPLY_ACK))
        return self._set_up(share_memory=False)

    def _set_up(self, share_memory: bool = True) -> VhostUserFrontend:
        offered = self.get_u64(R.GET_FEATURES)
        if offered & V.VHOST_USER_F_PROTOCOL_FEATURES:
            proto = self.get_u64(R.GET_PROTOCOL_FEATURES) & self.want_protocol
            self.request(R.SET_PROTOCOL_FEATURES, U64(proto).pack())
            self.protocol_features = proto
        if self.num_queues is None:
            self.num_queues = (self.get_u64(R.GET_QUEUE_NUM) if self.protocol_features & P.MQ else 2)
        self.request(R.SET_OWNER)
        if self.want_backend_channel and self.protocol_features & P.BACKEND_REQ:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.request(R.SET_BACKEND_REQ_FD, fds=[theirs.fileno()], need_reply=True)
            theirs.close()
            self.backend_sock = ours
        want = int(V.VIRTIO_F_VERSION_1 | V.VHOST_USER_F_PROTOCOL_FEATURES
                   | V.VIRTIO_RING_F_INDIRECT_DESC | (V.VIRTIO_RING_F_EVENT_IDX if self.event_idx else 0))
        self.features = offered & want
        if not self.features & V.VIRTIO_RING_F_EVENT_IDX:
            self.event_idx = False
        self.request(R.SET_FEATURES, U64(self.features).pack())
        if share_memory:
            self.share_memory()
        if self.want_dax:
            self.start_window()
        for i in range(self.num_queues):
            self.queues.append(self.setup_queue(i))
        return self

    def start_window(self) -> None:
        """Create the cache window the back-end asked for and serve its channel."""
        from .dax import BackendChannelServer, CacheWindow

        if self.dax_protocol == "shmem":
            if not self.protocol_features & self.shmem_feature:
                raise BackendError("the back-end does not offer the SHMEM protocol feature")
            sizes = self.get_shmem_config()
            if not sizes or not sizes[0]:
                raise BackendError("the back-end has no shared-memory region 0")
            size = sizes[0]
        else:
            size = 1 << 30
        if self.backend_sock is None:
            raise BackendError("no backend channel (BACKEND_REQ not offered)")
        self.window = CacheWindow(size)
        self.channel_server = BackendChannelServer(
            self, self.window, announce=self.announce_window
            and bool(self.protocol_features & P.CONFIGURE_MEM_SLOTS), strict_eof=self.strict_eof)
        self.channel_server.start()

    def share_memory(self) -> None:
        regions = self.ram.mem_regions()
        if self.use_mem_slots and self.protocol_features & P.CONFIGURE_MEM_SLOTS:
            self.get_u64(R.GET_MAX_MEM_SLOTS)
            for r in regions:
                self.request(R.ADD_MEM_REG, SingleMemRegion(r).pack(), [self.ram.fd], need_reply=True)
        else:
            self.request(R.SET_MEM_TABLE, MemTable(regions).pack(), [self.ram.fd] * len(regions),
                         need_reply=True)

    def setup_queue(self, index: int) -> DriverQueue:
        q = DriverQueue(index, self.queue_size, self.ram, self.alloc, self.event_idx)
        self.request(R.SET_VRING_NUM, VringState(index, self.queue_size).pack())
        self.request(R.SET_VRING_BASE, VringState(index, 0).pack())
        desc, used, avail = q.addr_uva()
        self.request(R.SET_VRING_ADDR, VringAddr(index, 0, desc, used, avail, 0).pack())
        self.request(R.SET_VRING_CALL, VringFd(index, False).pack(), [q.call_fd])
        self.request(R.SET_VRING_KICK, VringFd(index, False).pack(), [q.kick_fd])
        if self.features & V.VHOST_USER_F_PROTOCOL_FEATURES:
            self.request(R.SET_VRING_ENABLE, VringState(index, 1).pack())
        return q

    # -- dirty logging (what QEMU does while it migrates the VM) ---------------------------

    def log_size_needed(self) -> int:
        """Bytes of log that cover all of guest RAM's guest-physical addresses."""
        end = max(gpa + sz for gpa, _, sz in self.ram.layout)
        return ((end + LOG_PAGE - 1) // LOG_PAGE + 7) // 8

    def set_log_base(self, size: int | None = None, offset: int = 0, fds=None) -> int:
        """SET_LOG_BASE with a new memfd log of ``size`` bytes (default: all of guest RAM)
        at ``offset`` in the memfd; ``fds`` overrides the fds sent (hostile tests).  Returns
        the back-end's u64 reply (0: in use).  The log we keep is replaced only on 0."""
        if not self.protocol_features & P.LOG_SHMFD:
            raise BackendError("the back-end does not offer LOG_SHMFD")
        size = self.log_size_needed() if size is None else size
        fd = os.memfd_create("pyvirtiofsd-dirty-log", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, offset + size)
            payload = struct.pack("<QQ", size, offset)
            reply = self.request(R.SET_LOG_BASE, payload, [fd] if fds is None else fds)
            value = U64.unpack(reply).value
            if value == 0:
                self._drop_log()
                self.log_map = mmap.mmap(fd, offset + size, mmap.MAP_SHARED,
                                         mmap.PROT_READ | mmap.PROT_WRITE)
                self.log_fd, fd = fd, -1
                self.log_offset = offset
            return value
        finally:
            if fd >= 0:
                os.close(fd)

    def set_log_all(self, on: bool) -> None:
        """SET_FEATURES with or without VHOST_F_LOG_ALL (the features are otherwise kept)."""
        self.features = (self.features | V.VHOST_F_LOG_ALL) if on else (self.features & ~V.VHOST_F_LOG_ALL)
        self.request(R.SET_FEATURES, U64(int(self.features)).pack(), need_reply=True)

    def set_vring_log(self, index: int, on: bool) -> None:
        """SET_VRING_ADDR again with VHOST_VRING_F_LOG and the used ring's address."""
        q = self.queues[index]
        desc, used, avail = q.addr_uva()
        flags = VHOST_VRING_F_LOG if on else 0
        self.request(R.SET_VRING_ADDR, VringAddr(index, flags, desc, used, avail, q.used).pack(),
                     need_reply=True)

    def start_dirty_log(self, size: int | None = None) -> None:
        """QEMU's order: the log, then VHOST_F_LOG_ALL, then VHOST_VRING_F_LOG on each ring."""
        if self.set_log_base(size) != 0:
            raise BackendError("back-end refused SET_LOG_BASE")
        self.set_log_all(True)
        for q in self.queues:
            self.set_vring_log(q.index, True)

    def stop_dirty_log(self) -> None:
        self.set_log_all(False)
        for q in self.queues:
            self.set_vring_log(q.index, False)

    def dirty_pages(self) -> set[int]:
        """Page numbers (gpa // 4096) whose bit is set in our log."""
        data = self.log_map[self.log_offset:]
        pages = set()
        for i, byte in enumerate(data):
            if byte:
                pages.update(i * 8 + b for b in range(8) if byte >> b & 1)
        return pages

    def clear_dirty_log(self) -> None:
        """What QEMU's sync does: take the bits (here: forget them)."""
        n = len(self.log_map) - self.log_offset
        self.log_map[self.log_offset:] = bytes(n)

    def _drop_log(self) -> None:
        if self.log_map is not None:
            self.log_map.close()
            self.log_map = None
        if self.log_fd >= 0:
            os.close(self.log_fd)
            self.log_fd = -1

    def get_config(self, size: int = 40) -> bytes:
        return Config.unpack(self.request(R.GET_CONFIG, Config(0, size, 0, bytes(size)).pack())).data

    def get_shmem_config(self) -> list[int]:
        return ShmemConfig.unpack(self.request(R.GET_SHMEM_CONFIG)).memory_sizes

    def stop_queue(self, index: int) -> int:
        if self.features & V.VHOST_USER_F_PROTOCOL_FEATURES:
            self.request(R.SET_VRING_ENABLE, VringState(index, 0).pack())
        return VringState.unpack(self.request(R.GET_VRING_BASE, VringState(index, 0).pack())).num

    def send_raw(self, data: bytes, fds=()) -> None:
        """Put arbitrary bytes on the socket (hostile-input tests)."""
        self.conn.send(data, list(fds))

    def recv_message(self) -> Message:
        return self.conn.recv()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None
        for q in self.queues:
            q.close()
        self.queues = []
        self._close_window()
        self._drop_log()
        self.ram.close()

    def _close_window(self) -> None:
        if self.channel_server is not None:
            self.channel_server.stop()
            self.channel_server = None
        if self.backend_sock is not None:
            self.backend_sock.close()
            self.backend_sock = None
        if self.window is not None:
            self.window.close()
            self.window = None

    def __enter__(self) -> VhostUserFrontend:
        return self.connect() if self.conn is None else self

    def __exit__(self, *exc) -> None:
        self.close()
