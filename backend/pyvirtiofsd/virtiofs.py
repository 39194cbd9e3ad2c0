"""The virtio-fs device (virtio device id 26) on top of the generic vhost-user back-end:
queue layout, config space, and how FUSE requests reach the server.

Queue 0 is hiprio (FORGET, BATCH_FORGET, INTERRUPT: served on its own thread, they never
block); queues 1..n are request queues whose requests go to a pool of worker threads, so
one slow FSYNC does not hold up a GETATTR behind it.

The hot path: when the file system offloads requests to C (its offload description, see
:mod:`pyvirtiofsd.offload`; the passthrough file system does), each request queue is served
by ``hot_threads`` threads running
the C loop of cext/hotpath.c, which answers what the file system offloads itself -- READ
and WRITE as a preadv/pwritev between the file and guest memory, GETATTR, LOOKUP, CREATE,
OPEN, RELEASE, UNLINK, SETATTR... from the C store -- and passes everything else up: quick
operations are served by the queue thread itself (:data:`INLINE_OPCODES`) while another
thread of the queue is free to take over, the rest by the worker pool.  The hiprio queue
runs the same loop on one thread (FORGET and BATCH_FORGET in C).  (READDIRPLUS reaches
Python, whose PassthroughFs packs its records with one C call.)
"""
from __future__ import annotations

import os
import queue
import struct
import threading
from typing import Any

from pyvirtiofsd import logs

from ._cext import ffi, lib
from .fuse.abi import Opcode
from .fuse.request import FuseRequest
from .offload import ReplyPolicy
from .server.dispatch import ANY_SESSION
from .vhost_user.backend_channel import BackendChannel
from .vhost_user.device import VhostUserDevice
from .vhost_user.protocol import SHMEM_BIT_DEFAULT, ProtocolFeature as P, shmem_bit

log = logs.get_logger("pyvirtiofsd.virtiofs")

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


def _unique(req: FuseRequest) -> int:
    """``fuse_in_header.unique`` of a request (-1 when the header cannot be read: such a
    request is never found by an INTERRUPT, and the server refuses it anyway)."""
    try:
        head = req.read_in(0, 16)
    except OSError:
        return -1
    return int.from_bytes(head[8:16], "little") if len(head) == 16 else -1


class WorkerPool:
    """Plain threads on a queue: cheaper per request than concurrent.futures.

    Requests waiting for a worker are known by their FUSE ``unique``, so that a
    FUSE_INTERRUPT for one of them (:meth:`interrupt`) answers it EINTR through ``cancel``
    and no worker ever serves it."""

    def __init__(self, size: int, serve, cancel=None, session=None):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._serve = serve
        self._session = session   # the server's current session, noted at submit
        self._cancel = cancel
        self._waiting: dict[int, FuseRequest] = {}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"fuse-worker-{i}", daemon=True)
                         for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, req: FuseRequest, arrived_in: Any = None) -> None:
        """Queue ``req`` for a worker; ``arrived_in``: the session it was sent in, if the
        transport knows (else the one current now)."""
        unique = _unique(req)
        with self._lock:
            # A unique already waiting (a confused guest) or unreadable: not cancellable.
            if unique < 0 or unique in self._waiting:
                unique = None
            else:
                self._waiting[unique] = req
        # The session it arrived in: a worker serves it only in that one (a request that
        # waited here across DESTROY and a new INIT must not act in the new session).
        if arrived_in is None:
            arrived_in = self._session() if self._session else ANY_SESSION
        self._queue.put((unique, req, arrived_in))

    def interrupt(self, unique: int) -> bool:
        """Cancel the request ``unique`` if no worker has taken it yet."""
        with self._lock:
            req = self._waiting.pop(unique, None)
        if req is None or self._cancel is None:
            return False
        self._cancel(req, unique)
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            unique, req, session = item
            if unique is not None:
                with self._lock:
                    if self._waiting.get(unique) is not req:
                        continue        # cancelled while it waited: already answered
                    del self._waiting[unique]
            self._serve(req, session)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)


# Served by Python on the queue thread itself: quick on a local file system, and a hand-off
# to a worker (a futex wake, a GIL hand-over; see BENCHMARKS.md) would cost more than they
# do.  What may block for long (FSYNC, FLUSH on NFS, FALLOCATE, a truncating
# SETATTR, DAX mappings that wait for the front-end, READ/WRITE that C left to Python)
# still goes to the pool.  Should an inline one block anyway (a hung NFS LOOKUP), another
# thread of the queue takes the ring over within 10 ms (PVFS_HOT_STALL_NS, cext/leader.h).
INLINE_OPCODES = frozenset({
    Opcode.FUSE_LOOKUP, Opcode.FUSE_GETATTR, Opcode.FUSE_STATX, Opcode.FUSE_ACCESS,
    Opcode.FUSE_READLINK, Opcode.FUSE_OPEN, Opcode.FUSE_OPENDIR, Opcode.FUSE_RELEASE,
    Opcode.FUSE_RELEASEDIR, Opcode.FUSE_CREATE, Opcode.FUSE_MKNOD, Opcode.FUSE_MKDIR,
    Opcode.FUSE_SYMLINK, Opcode.FUSE_LINK, Opcode.FUSE_UNLINK, Opcode.FUSE_RMDIR,
    Opcode.FUSE_RENAME, Opcode.FUSE_RENAME2, Opcode.FUSE_READDIR, Opcode.FUSE_READDIRPLUS,
    Opcode.FUSE_STATFS, Opcode.FUSE_GETXATTR, Opcode.FUSE_LISTXATTR, Opcode.FUSE_LSEEK,
    Opcode.FUSE_INIT, Opcode.FUSE_DESTROY, Opcode.FUSE_INTERRUPT, Opcode.FUSE_FORGET,
    Opcode.FUSE_BATCH_FORGET,
})


class HotPath:
    """The C serving context of the request queues.

    What it serves is the file system's offload description (:mod:`pyvirtiofsd.offload`:
    the file system alone knows which of its answers C can give) -- and nothing before INIT
    (the context follows the server's session, :meth:`publish`), while the server logs
    every request as a structlog event (``ServerOptions(ops_log=True)``, a debugging aid),
    or with ``PYVIRTIOFSD_HOTPATH=0`` in the environment.  ``PYVIRTIOFSD_HOT_THREADS=N``
    sets the threads per queue (for comparisons).

    With statistics or an ops log (the server's ops recorder) C records what it serves
    itself (:mod:`pyvirtiofsd.hotstats`, :attr:`recording`) into the same statistics and
    file.
    """

    def __init__(self, server, dax, threads: int):
        self.server = server
        self.threads = int(os.environ.get("PYVIRTIOFSD_HOT_THREADS", threads))
        self.ctx = None
        self.ops = 0
        self.recording = None
        recorder = server.ops
        if ((recorder is not None and recorder.events)
                or os.environ.get("PYVIRTIOFSD_HOTPATH", "1") == "0"):
            return
        o = server.options
        offload = server.fs.offload(ReplyPolicy(readonly=o.readonly, dax=dax is not None,
                                                id_mapping=bool(o.uid_map or o.gid_map)))
        if offload is None:
            return
        # bit n: opcode n, for the opcodes the C loop knows
        self.ops = sum(1 << op for op in offload.opcodes if op < 64 and lib.pvfs_hot_can_serve(op))
        if not self.ops:
            return
        self.ctx = ffi.gc(lib.pvfs_hot_new(offload.store), lib.pvfs_hot_free)
        whole = int(o.timeout)
        lib.pvfs_hot_set_attr(self.ctx, o.guest_page_size, whole, int((o.timeout - whole) * 1e9))
        lib.pvfs_hot_set_open_flags(self.ctx, server.cache_open_flags(False),
                                    server.cache_open_flags(True))
        lib.pvfs_hot_set_ops(self.ctx, self.ops)
        lib.pvfs_hot_set_inline(self.ctx, sum(1 << op for op in INLINE_OPCODES if op < 64))
        if recorder is not None:
            from .hotstats import HotRecording   # only when something is recorded

            self.recording = HotRecording(self.ctx, recorder)

    def publish(self, s) -> None:
        """The server's session as C must see it: called by the server under its lifecycle
        lock when INIT starts a session (before the guest has the reply, so its first
        requests find C serving) and when DESTROY or a reset ends it (before the file
        system forgets its inodes)."""
        if s is None:
            lib.pvfs_hot_set_session(self.ctx, 0, 0, 0, 0)
        else:
            lib.pvfs_hot_set_session(self.ctx, s.number, s.minor, s.max_write, s.max_read)

    def stats(self) -> dict[str, int]:
        if self.ctx is None:
            return {}
        names = ("reads", "writes", "passed", "bytes", "getattrs", "lookups", "readdirpluses",
                 "readdirs")
        return {n: lib.pvfs_hot_stat(self.ctx, i) for i, n in enumerate(names)}


class _QueueHandler:
    """What a request queue runs: ``hot``/``threads`` for the C loop, the call that takes
    the requests it passes up for the pool, and :meth:`inline` for the ones the queue
    thread serves itself.  Both are served only in the session the C loop saw when it
    popped them (``req.session``): a DESTROY and INIT behind them on the ring may have
    been served first, by another thread of the queue."""

    __slots__ = ("hot", "threads", "_submit", "_serve")

    def __init__(self, submit, hot, threads: int, serve):
        self._submit = submit
        self.hot = hot
        self.threads = threads
        self._serve = serve

    def __call__(self, req) -> None:
        self._submit(req, req.session)

    def inline(self, req) -> None:
        self._serve(req, req.session)


class VirtioFsDevice(VhostUserDevice):
    def __init__(self, server, *, tag: str | None = None, num_request_queues: int = 1,
                 thread_pool_size: int = 8, dax=None, shmem_bit_number: int = SHMEM_BIT_DEFAULT,
                 dax_protocol: str = "shmem", hot_threads: int = 2,
                 migration: dict | None = None):
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
        self.hotpath = HotPath(server, dax, hot_threads)
        if self.hotpath.ctx is not None:
            server.session_changed = self.hotpath.publish
        self.pool = None
        if thread_pool_size > 0:
            self.pool = WorkerPool(thread_pool_size, self._serve, cancel=server.cancel,
                                   session=lambda: server.session_number)
            server.interrupted = self.pool.interrupt
        # DAX: a cache window (shared-memory region 0) mapped through the backend channel.
        self.dax = dax
        self.dax_protocol = dax_protocol
        self._shmem = shmem_bit(shmem_bit_number)
        if dax is not None:
            self.protocol_features |= int(P.REPLY_ACK)
            if dax_protocol == "shmem":
                self.protocol_features |= self._shmem
        self._dax_usable = False
        # Live migration (DEVICE_STATE): a passthrough file system's store can be moved.
        # ``migration``: pyvirtiofsd.migration.MigrationOptions' fields (--migration-*).
        self.migration = dict(migration or {})
        self.has_state = hasattr(server.fs, "store")
        if self.has_state:
            self.protocol_features |= int(P.DEVICE_STATE)

    def save_state(self) -> bytes:
        """The state a destination needs to go on with this guest's session (queues
        stopped).  The migration module is imported only now."""
        from .migration import MigrationOptions, save
        return save(self.server, MigrationOptions(**self.migration))

    def load_state(self, data: bytes) -> None:
        from .migration import MigrationOptions, load
        load(self.server, MigrationOptions(**self.migration), data)

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

    def _serve(self, req: FuseRequest, session=ANY_SESSION) -> None:
        """Serve a request in Python."""
        self.server.handle(req, session)

    def handler(self, queue_index: int):
        if queue_index == HIPRIO_QUEUE:
            # FORGET and BATCH_FORGET in C where the file system offloads them; the rest
            # (INTERRUPT) by Python on the queue's one thread, as without the C path.
            if self.hotpath.ctx is None:
                return self._serve
            return _QueueHandler(self._serve, self.hotpath.ctx, 1, self._serve)
        submit = self._serve if self.pool is None else self.pool.submit
        if self.hotpath.ctx is None:
            return submit
        return _QueueHandler(submit, self.hotpath.ctx, self.hotpath.threads, self._serve)

    def reset(self) -> None:
        self.server.reset()
        if self.hotpath.recording is not None:
            self.hotpath.recording.flush()   # the queues are stopped: all C made is there
        stats = self.hotpath.stats()
        if stats.get("reads") or stats.get("writes"):
            log.info("hot path totals", **stats)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
