"""The device-agnostic vhost-user back-end: the protocol state machine of the main socket.

``Backend.handle(msg)`` takes one decoded front-end message and returns the reply bytes
(or None); ``Backend.serve(conn)`` is the socket loop around it.  A message that cannot
be honoured is refused on that message (a failure ack with REPLY_ACK, a log line without);
only a broken stream (bad header, truncated fds) or the front-end closing ends the
session.
"""
from __future__ import annotations

import os
import socket

from pyvirtiofsd import logs

from .._cext import ffi, lib
from .codec import (
    Config,
    CodecError,
    Message,
    ShmemConfig,
    U64,
    VringState,
    decode_body,
    encode_reply,
)
from .connection import Connection, ConnectionClosed
from .device import BASE_PROTOCOL_FEATURES, VhostUserDevice
from .memory import GuestMemory
from .protocol import (
    MAX_MEM_SLOTS,
    VHOST_VRING_F_LOG,
    FrontendReq as R,
    ProtocolFeature as P,
    VirtioFeature as V,
)
from .vring import Vring

log = logs.get_logger("pyvirtiofsd.vhost_user")


class RequestRefused(Exception):
    """The front-end asked for something we cannot do; the session goes on."""


# Requests whose reply carries a body; REPLY_ACK never adds a second reply to these.
_HAS_REPLY = {R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_VRING_BASE, R.GET_QUEUE_NUM,
              R.GET_CONFIG, R.GET_MAX_MEM_SLOTS, R.GET_STATUS, R.GET_SHMEM_CONFIG,
              R.GET_INFLIGHT_FD, R.SET_DEVICE_STATE_FD, R.CHECK_DEVICE_STATE}
# Their zero reply means success: refused, they answer 1 (an error code) instead.
_STATE_REQUESTS = {R.SET_DEVICE_STATE_FD, R.CHECK_DEVICE_STATE}


# The dirty log's granularity: one bit per page of guest-physical address space.
LOG_PAGE = 4096


def log_bytes_for(end_gpa: int) -> int:
    """Bytes of dirty log that cover guest-physical addresses below end_gpa."""
    pages = (end_gpa + LOG_PAGE - 1) // LOG_PAGE
    return (pages + 7) // 8


class Backend:
    def __init__(self, device: VhostUserDevice, *, protocol_features: int | None = None):
        self.device = device
        # Plain ints: ~ on an IntFlag only inverts the bits the enum knows.  Dirty logging
        # (VHOST_F_LOG_ALL, LOG_SHMFD) is the back-end's, for every device: all writes into
        # guest memory go through cext/vq.c, which logs them (cext/dirtylog.h).
        self.offered_features = (int(device.features) | int(V.VHOST_USER_F_PROTOCOL_FEATURES)
                                 | int(V.VHOST_F_LOG_ALL))
        self.offered_protocol = int(BASE_PROTOCOL_FEATURES | device.protocol_features
                                    if protocol_features is None else protocol_features)
        self.acked_features = 0
        self.acked_protocol = 0
        self.owner = False
        self.memory = GuestMemory()
        self.vrings = [Vring(i) for i in range(device.num_queues)]
        # The device's dirty log, shared by its queues (logging off, no log until asked).
        self.dirty = ffi.gc(lib.pvfs_dirty_new(), lib.pvfs_dirty_unref)
        for vring in self.vrings:
            vring.set_dirty(self.dirty)
        self.backend_channel = None
        self.status = 0
        self.state_transfer = None      # the running DEVICE_STATE transfer (device_state.py)

    # -- helpers ------------------------------------------------------------------------

    def _vring(self, index: int) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise RequestRefused(f"no queue {index} (the device has {len(self.vrings)})")
        return self.vrings[index]

    @staticmethod
    def _one_fd(msg: Message) -> int:
        if len(msg.fds) != 1:
            raise RequestRefused(f"expected one file descriptor, got {len(msg.fds)}")
        return msg.fds.pop()

    def _protocol(self, bit: int) -> bool:
        return bool(self.acked_protocol & bit)

    # -- the state machine --------------------------------------------------------------

    def handle(self, msg: Message) -> bytes | None:
        """Handle one message; return the reply to send, if any.  Closes fds it does not
        keep, even when it refuses the message."""
        name = msg.name()
        try:
            body = decode_body(msg)
            reply = self._dispatch(msg, body)
            ok = True
        except (RequestRefused, CodecError, ValueError, OSError) as e:
            log.warning("refused vhost-user request", request=name, reason=str(e))
            reply, ok = None, False
        finally:
            for fd in msg.fds:
                os.close(fd)
            msg.fds.clear()
        if msg.request == R.SET_LOG_BASE and self._protocol(P.LOG_SHMFD):
            # LOG_SHMFD: the front-end waits for this reply (u64 0: the log is in use).
            return encode_reply(msg.request, U64(0 if ok else 1).pack())
        if msg.request in _HAS_REPLY:
            if reply is None:
                # A request that must be answered: answer it with its zero value rather
                # than leaving the front-end waiting.
                reply = (b"" if msg.request == R.GET_CONFIG else
                         U64(1 if msg.request in _STATE_REQUESTS else 0).pack())
            return encode_reply(msg.request, reply)
        if msg.need_reply and self._protocol(P.REPLY_ACK):
            return encode_reply(msg.request, U64(0 if ok else 1).pack())
        return None

    def _dispatch(self, msg: Message, body) -> bytes | None:  # noqa: C901 - one table
        req = msg.request
        if req == R.GET_FEATURES:
            return U64(self.offered_features).pack()
        if req == R.SET_FEATURES:
            return self._set_features(body.value)
        if req == R.GET_PROTOCOL_FEATURES:
            return U64(self.offered_protocol).pack()
        if req == R.SET_PROTOCOL_FEATURES:
            if body.value & ~self.offered_protocol:
                raise RequestRefused(f"protocol features {body.value:#x} were not offered")
            self.acked_protocol = body.value
            self.device.acked_protocol_features(body.value)
            log.info("protocol features negotiated", protocol_features=hex(body.value))
            return None
        if req == R.SET_OWNER:
            self.owner = True
            return None
        if req in (R.RESET_OWNER, R.RESET_DEVICE):
            # QEMU sends SET_BACKEND_REQ_FD once per connection and never again after a
            # reset (a guest reboot, or the system reset of a QEMU started with -incoming):
            # the channel stays, or the front-end reads EOF on it and DAX maps are lost.
            self.reset(keep_channel=True)
            return None
        if req == R.GET_QUEUE_NUM:
            return U64(len(self.vrings)).pack()
        if req == R.GET_MAX_MEM_SLOTS:
            return U64(MAX_MEM_SLOTS).pack()
        if req == R.SET_MEM_TABLE:
            self.memory.set_table(body.regions, msg.fds)  # mapped; the fds are closed below
            self._memory_changed()
            return None
        if req == R.ADD_MEM_REG:
            fd = self._one_fd(msg)
            try:
                self.memory.add(body.region, fd)
            finally:
                os.close(fd)
            self._memory_changed()
            return None
        if req == R.REM_MEM_REG:
            self.memory.remove(body.region)
            self._memory_changed()
            return None
        if req == R.SET_VRING_NUM:
            self._vring(body.index).set_num(body.num)
            return None
        if req == R.SET_VRING_ADDR:
            self._vring(body.index).set_addr(body.desc, body.used, body.avail,
                                             log=bool(body.flags & VHOST_VRING_F_LOG),
                                             log_gpa=body.log)
            return None
        if req == R.SET_VRING_BASE:
            self._vring(body.index).set_base(body.num)
            return None
        if req == R.GET_VRING_BASE:
            vring = self._vring(body.index)
            base = vring.stop()
            self.device.queue_stopped(vring.index)
            return VringState(body.index, base).pack()
        if req == R.SET_VRING_KICK:
            vring = self._vring(body.index)
            fd = None if body.nofd else self._one_fd(msg)
            vring.start(fd, self.device.handler(vring.index))
            return None
        if req == R.SET_VRING_CALL:
            self._vring(body.index).set_call_fd(None if body.nofd else self._one_fd(msg))
            return None
        if req == R.SET_VRING_ERR:
            self._vring(body.index).set_err_fd(None if body.nofd else self._one_fd(msg))
            return None
        if req == R.SET_VRING_ENABLE:
            if not self.acked_features & V.VHOST_USER_F_PROTOCOL_FEATURES:
                raise RequestRefused("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES")
            self._vring(body.index).set_enabled(bool(body.num))
            return None
        if req == R.GET_CONFIG:
            if not self._protocol(P.CONFIG):
                raise RequestRefused("GET_CONFIG without VHOST_USER_PROTOCOL_F_CONFIG")
            data = self.device.get_config(body.offset, body.size)
            return Config(body.offset, len(data), body.flags, data).pack()
        if req == R.SET_CONFIG:
            self.device.set_config(body.offset, body.data)
            return None
        if req == R.SET_BACKEND_REQ_FD:
            self._set_backend_channel(self._one_fd(msg))
            return None
        if req == R.GET_SHMEM_CONFIG:
            return ShmemConfig(self.device.shmem_sizes()).pack()
        if req == R.SET_STATUS:
            self.status = body.value & 0xFF
            return None
        if req == R.GET_STATUS:
            return U64(self.status).pack()
        if req == R.SET_DEVICE_STATE_FD or req == R.CHECK_DEVICE_STATE:
            if not self._protocol(P.DEVICE_STATE):
                raise RequestRefused(f"{msg.name()} without VHOST_USER_PROTOCOL_F_DEVICE_STATE")
            from . import device_state
            if req == R.SET_DEVICE_STATE_FD:
                return U64(device_state.set_device_state_fd(self, msg, body)).pack()
            return U64(device_state.check_device_state(self)).pack()
        if req == R.SET_LOG_BASE:
            self._set_log_base(msg, body)
            return None
        if req == R.SET_LOG_FD:
            # The log is SET_LOG_BASE's shared memory; nothing needs a log-update eventfd.
            raise RequestRefused("SET_LOG_FD is not needed: the dirty log is SET_LOG_BASE's")
        raise RequestRefused(f"unsupported request {msg.name()}")

    def _set_features(self, value: int) -> None:
        if value & ~self.offered_features:
            raise RequestRefused(f"features {value:#x} were not offered")
        self.acked_features = value
        # On before the next write, off for every write after this; requests go on.
        lib.pvfs_dirty_set_on(self.dirty, int(bool(value & V.VHOST_F_LOG_ALL)))
        for vring in self.vrings:
            vring.set_event_idx(bool(value & V.VIRTIO_RING_F_EVENT_IDX))
            if not value & V.VHOST_USER_F_PROTOCOL_FEATURES:
                vring.set_enabled(True)  # without the protocol feature rings start enabled
        self.device.acked_features(value)
        log.info("features negotiated", features=hex(value))

    def _log_needed(self) -> int:
        """Bytes of log the current memory table needs."""
        end = max((r.guest_phys_addr + r.memory_size for r in self.memory.regions), default=0)
        return log_bytes_for(end)

    def _set_log_base(self, msg: Message, body) -> None:
        if not self._protocol(P.LOG_SHMFD):
            raise RequestRefused("SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD")
        fd = self._one_fd(msg)
        try:
            need = self._log_needed()
            rc = lib.pvfs_dirty_set_log(self.dirty, fd, body.mmap_size, body.mmap_offset, need)
        finally:
            os.close(fd)
        if rc < 0:
            if body.mmap_size < need:
                raise RequestRefused(f"dirty log of {body.mmap_size} bytes is too small: guest "
                                     f"memory needs {need} bytes (a bit per 4 KiB page)")
            raise RequestRefused(f"cannot map the dirty log ({body.mmap_size} bytes at offset "
                                 f"{body.mmap_offset}): {os.strerror(-rc)}")
        log.info("dirty log mapped", size=body.mmap_size, offset=body.mmap_offset)

    def _memory_changed(self) -> None:
        for vring in self.vrings:
            vring.set_mem(self.memory.table)
        self.device.memory_changed(self.memory)
        size = lib.pvfs_dirty_log_size(self.dirty)
        if size and size < self._log_needed():
            # The front-end grows the log after it grows memory; until then, writes past the
            # log's end are not logged (and counted: pvfs_dirty_overflow).
            log.warning("guest memory now reaches past the dirty log", log_size=size,
                        needed=self._log_needed())
        log.debug("memory table changed",
                  regions=[(hex(r.guest_phys_addr), r.memory_size) for r in self.memory.regions])

    def _set_backend_channel(self, fd: int) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)    # not a socket (ENOTSOCK): refused, and not leaked
            raise
        if self.backend_channel is not None:
            self.device.set_backend_channel(None)
            self.backend_channel.close()
        self.backend_channel = Connection(sock)
        self.device.set_backend_channel(self.backend_channel)

    def reset(self, keep_channel: bool = False) -> None:
        """Stop every queue and forget the session's state (memory, features and, unless
        ``keep_channel``, the backend channel)."""
        for vring in self.vrings:
            if vring.started:
                vring.stop()
                self.device.queue_stopped(vring.index)
            vring.set_enabled(False)
        self.device.reset()
        self.acked_features = 0
        lib.pvfs_dirty_set_on(self.dirty, 0)
        lib.pvfs_dirty_clear_log(self.dirty)
        self.status = 0
        if self.backend_channel is not None and not keep_channel:
            self.device.set_backend_channel(None)
            self.backend_channel.close()
            self.backend_channel = None

    def close(self) -> None:
        if self.state_transfer is not None:
            self.state_transfer.cancel()     # a pipe the front-end never closes holds no thread
        self.reset()
        for vring in self.vrings:
            vring.close()
        self.memory.close()

    # -- the socket loop ----------------------------------------------------------------

    def serve(self, conn: Connection) -> bool:
        """Serve one front-end until it disconnects (True) or breaks the message stream
        so that we cannot find the next message (False, logged)."""
        while True:
            try:
                msg = conn.recv()
            except (ConnectionClosed, ConnectionResetError):
                return True
            except CodecError as e:
                log.error("front-end broke the vhost-user stream; ending the session", reason=str(e))
                return False
            log.debug("vhost-user request", request=msg.name(), flags=hex(msg.flags),
                      size=len(msg.payload), fds=len(msg.fds))
            reply = self.handle(msg)
            if reply is not None:
                conn.send(reply)
