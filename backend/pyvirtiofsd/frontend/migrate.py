"""Moving a running session from one vhost-user-fs back-end to another, as QEMU does in a
live migration -- without a VM: the guest's RAM (our memfd) and the driver's rings stay
where they are, and the second back-end takes over the rings where the first stopped.

``migrate(source, socket_path)``:

1. stop every ring on the source (SET_VRING_ENABLE 0, GET_VRING_BASE: where it stopped);
2. SET_DEVICE_STATE_FD (save) with a pipe; read the state until EOF; CHECK_DEVICE_STATE;
3. connect to the destination: features, protocol features, the same memory table;
4. SET_DEVICE_STATE_FD (load) with a pipe; write the state, close; CHECK_DEVICE_STATE;
5. set up the same rings there with the bases from step 1, and start them.

The returned front-end owns the RAM and the rings; the source's front-end keeps only its
connection (close it when done).  A :class:`~.fuse_client.FuseClient` goes on with
``client.fe = destination``: the same nodeids and fhs, now served by the destination.
"""
from __future__ import annotations

import os

from ..vhost_user.codec import DeviceStateTransfer, U64, VringAddr, VringFd, VringState, encode
from ..vhost_user.protocol import VERSION, FrontendReq as R, ProtocolFeature as P, \
    VirtioFeature as V
from .memory import GuestRAM
from .vhost import BackendError, VhostUserFrontend, connect_unix
from ..vhost_user.connection import Connection

SAVE, LOAD = 0, 1
NO_FD = 1 << 8


def _call(fe: VhostUserFrontend, req: int, payload: bytes = b"", fds=()) -> int:
    """A request whose reply is a u64 (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE)."""
    with fe._lock:
        fe.conn.send(encode(req, payload, VERSION), list(fds))
        reply = fe.conn.recv()
    for fd in reply.fds:
        os.close(fd)
    if reply.request != req or not reply.is_reply:
        raise BackendError(f"reply to request {req} came back as request {reply.request}")
    return U64.unpack(reply.payload).value


def _transfer(fe: VhostUserFrontend, direction: int) -> int:
    """Start a state transfer: the back-end gets its end of a new pipe (the read end to
    load, the write end to save) through SET_DEVICE_STATE_FD; returns ours."""
    if not fe.protocol_features & P.DEVICE_STATE:
        raise BackendError("the back-end does not do DEVICE_STATE")
    r, w = os.pipe2(os.O_CLOEXEC)
    ours, theirs = (w, r) if direction == LOAD else (r, w)
    try:
        rc = _call(fe, R.SET_DEVICE_STATE_FD, DeviceStateTransfer(direction, 0).pack(), [theirs])
    except BaseException:
        os.close(ours)
        raise
    finally:
        os.close(theirs)
    if rc & 0xFF:
        os.close(ours)
        what = "load" if direction == LOAD else "save"
        raise BackendError(f"SET_DEVICE_STATE_FD ({what}) failed: {rc:#x}")
    return ours


def _check(fe: VhostUserFrontend, what: str) -> None:
    if _call(fe, R.CHECK_DEVICE_STATE) != 0:
        raise BackendError(f"CHECK_DEVICE_STATE after the {what}: the back-end failed")


def save_state(fe: VhostUserFrontend) -> bytes:
    """The back-end's device state (its rings must be stopped)."""
    r = _transfer(fe, SAVE)
    try:
        chunks = []
        while chunk := os.read(r, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(r)
    _check(fe, "save")
    return b"".join(chunks)


def load_state(fe: VhostUserFrontend, data: bytes) -> None:
    """Give the back-end a device state; BackendError when it reports failure."""
    w = _transfer(fe, LOAD)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
    except BrokenPipeError:
        pass              # the back-end gave up reading: CHECK_DEVICE_STATE says why
    finally:
        os.close(w)
    _check(fe, "load")


def stop_rings(fe: VhostUserFrontend) -> list[int]:
    """Stop every ring; where each stopped (its next available index)."""
    return [fe.stop_queue(q.index) for q in fe.queues]


def migrate(source: VhostUserFrontend, socket_path: str, *, state: bytes | None = None,
            bases: list[int] | None = None) -> VhostUserFrontend:
    """Move the session to the back-end at ``socket_path``: the destination's front-end.
    ``state``/``bases``: already saved (tests that change the host in between)."""
    if source.window is not None:
        raise BackendError("moving a DAX window is not done")
    if bases is None:
        bases = stop_rings(source)
    if state is None:
        state = save_state(source)
    dest = VhostUserFrontend(socket_path, ram_size=4096, queue_size=source.queue_size,
                             num_queues=len(source.queues), event_idx=source.event_idx,
                             want_protocol=source.want_protocol | int(P.DEVICE_STATE),
                             use_mem_slots=source.use_mem_slots)
    dest.ram.close()
    dest.ram, dest.alloc = source.ram, source.alloc
    dest.conn = Connection(connect_unix(socket_path))
    try:
        offered = dest.get_u64(R.GET_FEATURES)
        if source.features & ~offered:
            raise BackendError(f"the destination lacks features {source.features & ~offered:#x}")
        if offered & V.VHOST_USER_F_PROTOCOL_FEATURES:
            proto = dest.get_u64(R.GET_PROTOCOL_FEATURES) & dest.want_protocol
            dest.request(R.SET_PROTOCOL_FEATURES, U64(proto).pack())
            dest.protocol_features = proto
        dest.request(R.SET_OWNER)
        dest.features = source.features
        dest.request(R.SET_FEATURES, U64(dest.features).pack())
        dest.share_memory()
        load_state(dest, state)
        for q, base in zip(source.queues, bases):
            i = q.index
            dest.request(R.SET_VRING_NUM, VringState(i, q.size).pack())
            dest.request(R.SET_VRING_BASE, VringState(i, base).pack())
            desc, used, avail = q.addr_uva()
            dest.request(R.SET_VRING_ADDR, VringAddr(i, 0, desc, used, avail, 0).pack())
            dest.request(R.SET_VRING_CALL, VringFd(i, False).pack(), [q.call_fd])
            dest.request(R.SET_VRING_KICK, VringFd(i, False).pack(), [q.kick_fd])
            if dest.features & V.VHOST_USER_F_PROTOCOL_FEATURES:
                dest.request(R.SET_VRING_ENABLE, VringState(i, 1).pack())
    except BaseException:
        dest.ram = GuestRAM(4096)        # the RAM is still the source's
        dest.close()
        raise
    # The rings and RAM are the destination's now; the source keeps its connection only.
    dest.queues, source.queues = source.queues, []
    source.ram = GuestRAM(4096)
    return dest
