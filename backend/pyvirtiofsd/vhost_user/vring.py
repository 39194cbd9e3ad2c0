"""One virtqueue as the vhost-user control plane sees it, the thread that serves it, and
the requests popped from it.

The ring mechanics (chain walking, bounds checks, used ring, EVENT_IDX) are in C
(cext/vq.c); this module keeps the state the protocol talks about: size, base, addresses,
kick/call/err fds, enabled, started.

A handler may carry a C serving context (``handler.hot``, a ``struct pvfs_hot *``, see
cext/hotpath.h) and a thread count (``handler.threads``): the queue is then served by that
many threads, each running the C loop (:c:func:`pvfs_hot_run`) with the GIL released,
which answers what it can (READ, WRITE, GETATTR, LOOKUP) without Python and returns the
rest to the thread, which hands it to ``handler`` -- or serves it itself with
``handler.inline`` when C says the opcode is a quick one.
"""
from __future__ import annotations

import errno
import os
import threading
import time
from typing import Callable

from pyvirtiofsd import logs

from .._cext import ffi, lib
from ..guestfaults import faults

log = logs.get_logger("pyvirtiofsd.vring")

# Results of cext/vq.h's pvfs_wait_kick (a kick, the stop eventfd, a timeout) and
# pvfs_vq_pop (a chain popped, the ring empty); negative values are -errno.
WAIT_KICK, WAIT_STOP, WAIT_TIMEOUT = 1, 2, 0
POPPED, RING_EMPTY = 1, 0
# QueueThread.run treats pvfs_hot_run's stop like pvfs_wait_kick's: the same value.
assert lib.PVFS_HOT_RUN_STOP == WAIT_STOP

CHAIN_ERRORS = {
    lib.PVFS_CHAIN_BAD_NEXT: "next index outside the descriptor table",
    lib.PVFS_CHAIN_TOO_LONG: "chain longer than its table (a loop)",
    lib.PVFS_CHAIN_BAD_ADDR: "buffer outside guest memory",
    lib.PVFS_CHAIN_NESTED_INDIRECT: "nested indirect table",
    lib.PVFS_CHAIN_BAD_INDIRECT: "malformed indirect descriptor",
    lib.PVFS_CHAIN_READ_AFTER_WRITE: "readable buffer after a writable one",
    lib.PVFS_CHAIN_TOO_MANY_IOV: "more buffers than one request may have",
    lib.PVFS_CHAIN_TOO_BIG: "total length overflows",
}


class RingRequest:
    """A popped descriptor chain, as a :class:`~pyvirtiofsd.fuse.request.FuseRequest`.

    Bulk data moves with preadv/pwritev between a file and guest memory in C, with the GIL
    released; only headers and small arguments are copied into Python.
    """

    __slots__ = ("_req", "in_len", "out_len", "head", "queue_index", "session")

    def __init__(self, req, queue_index: int):
        self._req = req
        # The hot path's session number when it popped the chain (0: none, or not popped
        # by the hot path): see pvfs_hot_set_session.
        self.session = req.session
        self.in_len = req.in_len
        self.out_len = req.out_len
        self.head = req.head
        self.queue_index = queue_index

    def read_in(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.in_len - offset))
        buf = bytearray(size)
        n = lib.pvfs_req_read_in(self._req, offset, ffi.from_buffer(buf), size)
        if n < 0:
            raise OSError(-n, "request buffer is not in guest memory")
        return bytes(buf[:n])

    def write_out(self, offset: int, data: bytes) -> None:
        n = lib.pvfs_req_write_out(self._req, offset, data, len(data))
        if n == -errno.EFAULT:
            raise OSError(errno.EFAULT, "reply buffer is not in guest memory")
        if n < 0:
            raise ValueError("reply does not fit the out area")

    def out_from_fd(self, fd: int, out_offset: int, size: int, file_offset: int) -> int:
        size = max(0, min(size, self.out_len - out_offset))
        n = lib.pvfs_req_preadv(self._req, fd, out_offset, size, file_offset)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return n

    def in_to_fd(self, fd: int, in_offset: int, size: int, file_offset: int) -> int:
        n = lib.pvfs_req_pwritev(self._req, fd, in_offset, size, file_offset)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return n

    def complete(self, used_len: int) -> None:
        req, self._req = self._req, None
        if req is None:
            raise RuntimeError("request completed twice")
        lib.pvfs_req_complete(req, used_len)


Handler = Callable[[RingRequest], None]


class Vring:
    """Protocol state of one queue.  Methods are called by the control thread only."""

    def __init__(self, index: int):
        self.index = index
        self.vq = ffi.gc(lib.pvfs_vq_new(index), lib.pvfs_vq_unref)
        self.num = 0
        self.kick_fd: int | None = None
        self.err_fd: int | None = None
        self.enabled = False
        self.started = False
        self._threads: list[QueueThread] = []
        self._hotq = None  # leader/follower state of the threads of a C-served queue

    # -- configuration ------------------------------------------------------------------

    def set_num(self, num: int) -> None:
        if lib.pvfs_vq_set_num(self.vq, num) < 0:
            raise ValueError(f"queue size {num} is not a power of two up to {lib.PVFS_VQ_MAX_SIZE}")
        self.num = num

    def set_base(self, base: int) -> None:
        lib.pvfs_vq_set_base(self.vq, base & 0xFFFF)

    def set_addr(self, desc: int, used: int, avail: int, *, log: bool = False,
                 log_gpa: int = 0) -> None:
        """SET_VRING_ADDR; ``log`` (VHOST_VRING_F_LOG): while dirty logging is on, used-ring
        writes are logged at ``log_gpa``, the used ring's guest-physical address."""
        rc = lib.pvfs_vq_set_addr(self.vq, desc, used, avail)
        if rc == -errno.EINVAL:  # misaligned; EFAULT just means "not mapped yet"
            raise ValueError("ring addresses are misaligned")
        lib.pvfs_vq_set_log_addr(self.vq, int(log), log_gpa)

    def set_dirty(self, dirty) -> None:
        """The device's dirty log (cext/dirtylog.h), before the queue starts."""
        lib.pvfs_vq_set_dirty(self.vq, dirty)

    def set_mem(self, table) -> None:
        if lib.pvfs_vq_set_mem(self.vq, table) < 0 and self.started:
            log.error("ring no longer inside guest memory", queue=self.index)

    def set_event_idx(self, on: bool) -> None:
        lib.pvfs_vq_set_event_idx(self.vq, on)

    def set_call_fd(self, fd: int | None) -> None:
        lib.pvfs_vq_set_call_fd(self.vq, -1 if fd is None else fd)

    def set_err_fd(self, fd: int | None) -> None:
        if self.err_fd is not None:
            os.close(self.err_fd)
        self.err_fd = fd

    # -- start/stop -----------------------------------------------------------------------

    def start(self, kick_fd: int | None, handler: Handler) -> None:
        """A kick fd arrived: the ring starts (restarting if it was running)."""
        self.stop()
        self.kick_fd = kick_fd
        if lib.pvfs_vq_start(self.vq) < 0:
            raise ValueError(f"queue {self.index} started before its rings were mapped")
        self.started = True
        hot = getattr(handler, "hot", None) is not None
        count = max(1, int(getattr(handler, "threads", 1))) if hot else 1
        if count > 1 and kick_fd is not None:
            # Should two threads ever wait on the kick eventfd at once, the one that loses
            # the race to read it must not block in read().
            os.set_blocking(kick_fd, False)
        if hot:
            self._hotq = ffi.gc(lib.pvfs_hotq_new(count), lib.pvfs_hotq_free)
            lib.pvfs_hotq_set_paused(self._hotq, int(not self.enabled))
        self._threads = [QueueThread(self, handler, i, self._hotq) for i in range(count)]
        for t in self._threads:
            t.start()

    def stop(self, drain_timeout: float = 5.0) -> int:
        """Stop serving (GET_VRING_BASE): no guest memory access once this returns.
        Waits up to drain_timeout for requests in flight; later completions are dropped."""
        for t in self._threads:
            t._stopping = True
        if self._hotq is not None:
            lib.pvfs_hotq_stop(self._hotq)   # followers wait on it, not on their stop fd
        for t in self._threads:
            t.stop()
        self._threads = []
        self._hotq = None
        deadline = time.monotonic() + drain_timeout
        pause = threading.Event()       # a futex wait: time.sleep's clock_nanosleep is not
        while self.started and lib.pvfs_vq_inflight(self.vq) and time.monotonic() < deadline:
            pause.wait(0.001)               # on the seccomp allow-list
        if self.started and lib.pvfs_vq_inflight(self.vq):
            log.warning("queue stopped with requests in flight", queue=self.index,
                        inflight=lib.pvfs_vq_inflight(self.vq))
        lib.pvfs_vq_stop(self.vq)
        self.started = False
        if self.kick_fd is not None:
            os.close(self.kick_fd)
            self.kick_fd = None
        return lib.pvfs_vq_get_base(self.vq)

    def set_enabled(self, on: bool) -> None:
        self.enabled = on
        if self._hotq is not None:
            lib.pvfs_hotq_set_paused(self._hotq, int(not on))
        for t in self._threads:
            t.wake()

    def close(self) -> None:
        self.stop(drain_timeout=1.0)
        self.set_call_fd(None)
        self.set_err_fd(None)
        # Drop the queue's reference to the memory table now, so guest memory is unmapped
        # when the back-end closes rather than whenever the queue object is collected.
        lib.pvfs_vq_set_mem(self.vq, ffi.NULL)

    @property
    def broken(self) -> bool:
        return bool(lib.pvfs_vq_is_broken(self.vq))


class QueueThread(threading.Thread):
    """Waits for kicks and hands every available chain to the handler.  Chains the C side
    refused are logged and returned to the driver here; the handler sees only good ones.
    With a C serving context (``handler.hot``) the waiting and the requests C serves (READ,
    WRITE, GETATTR, LOOKUP) stay in C and only the rest comes up to Python."""

    POLL_MS = 1  # for a ring without a kick fd (VHOST_USER_VRING_NOFD_MASK): poll

    def __init__(self, vring: Vring, handler: Handler, number: int = 0, hotq=None):
        super().__init__(name=f"vq{vring.index}" + (f".{number}" if number else ""), daemon=True)
        self.vring = vring
        self.handler = handler
        self.hot = getattr(handler, "hot", None)
        self.hotq = ffi.NULL if hotq is None else hotq
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        os.eventfd_write(self._stop_fd, 1)
        if self is not threading.current_thread():
            self.join()
        os.close(self._stop_fd)

    def wake(self) -> None:
        """Re-check the ring (e.g. after it was enabled).  Shares the stop eventfd: the
        thread tells a wake from a stop by ``_stopping``."""
        if not self._stopping:
            os.eventfd_write(self._stop_fd, 1)

    def run(self) -> None:
        vring, vq = self.vring, self.vring.vq
        req_p = ffi.new("struct pvfs_req **")
        kick = -1 if vring.kick_fd is None else vring.kick_fd
        timeout = -1 if kick >= 0 else self.POLL_MS
        # Buffers may have been made available before the ring started: look once first.
        while not self._stopping:
            if vring.enabled and self.hot is not None:
                rc = lib.pvfs_hot_run(self.hot, vq, self.hotq, kick, self._stop_fd, timeout, req_p)
                if rc == lib.PVFS_HOT_RUN_POOL or rc == lib.PVFS_HOT_RUN_INLINE:
                    inline = rc == lib.PVFS_HOT_RUN_INLINE
                    self._handle(req_p[0], self.handler.inline if inline else self.handler)
                    continue
                if rc < 0:
                    self._failed(rc)
                    if self._stopping:
                        return
                    continue
            elif self.hot is not None:
                # A disabled C-served ring: only the leader of its threads may read the
                # kick eventfd (a kick read here would be lost to it), so just wait to be
                # woken; once enabled again the leader looks at the ring before waiting.
                rc = lib.pvfs_wait_kick(self._stop_fd, -1, -1)
                continue
            else:
                if vring.enabled:
                    self._drain(vq, req_p)
                rc = lib.pvfs_wait_kick(kick, self._stop_fd, timeout if vring.enabled else -1)
            if self._stopping:
                return
            if rc == WAIT_STOP:     # or PVFS_HOT_RUN_STOP: the stop eventfd, a stop or a wake
                try:
                    os.eventfd_read(self._stop_fd)
                except BlockingIOError:
                    pass
            elif rc == -errno.EINTR:
                continue  # a signal (SIGUSR1: statistics) is no reason to stop serving
            elif rc < 0:
                log.error("waiting for kicks failed", queue=vring.index, error=os.strerror(-rc))
                return

    def _failed(self, rc: int) -> None:
        """The C loop returned an error: a broken queue, a stopped one, or a failed wait."""
        if lib.pvfs_vq_is_broken(self.vring.vq):
            log.error("virtqueue is broken: the driver published an impossible index; "
                      "not touching it until it is set up again", queue=self.vring.index)
            self._stopping = True
        elif rc != -errno.EIO:
            log.error("waiting for kicks failed", queue=self.vring.index, error=os.strerror(-rc))
            self._stopping = True
        else:
            # Stopped under us (GET_VRING_BASE): wait for the stop or a restart's wake.
            lib.pvfs_wait_kick(self._stop_fd, -1, -1)

    def _handle(self, req, serve) -> None:
        """A popped chain that ``serve`` serves -- or that is refused here, if C found it
        malformed.  A chain whose shape is intact but whose buffers lie outside guest
        memory is served: every access to a missing buffer fails with EFAULT."""
        if req.err == lib.PVFS_CHAIN_BAD_ADDR:
            faults.report("descriptor chain points outside guest memory",
                          queue=self.vring.index, head=req.head)
        elif req.err:
            faults.report("refused a descriptor chain", queue=self.vring.index,
                          head=req.head, reason=CHAIN_ERRORS.get(req.err, req.err))
            lib.pvfs_req_complete(req, 0)
            return
        serve(RingRequest(req, self.vring.index))

    def _drain(self, vq, req_p) -> None:
        while not self._stopping:
            rc = lib.pvfs_vq_pop(vq, req_p)
            if rc == POPPED:
                self._handle(req_p[0], self.handler)
            elif rc == RING_EMPTY:
                if not lib.pvfs_vq_enable_notify(vq):
                    return
            else:
                if lib.pvfs_vq_is_broken(vq):
                    log.error("virtqueue is broken: the driver published an impossible index; "
                              "not touching it until it is set up again", queue=self.vring.index)
                    self._stopping = True
                return
