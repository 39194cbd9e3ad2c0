"""The vhost-user back-end driven by our front-end over a real unix socket, with a tiny
echo device instead of virtio-fs, so the protocol layer is tested on its own."""
import os
import socket
import struct
import threading

import pytest

from pyvirtiofsd.frontend import BackendError, VhostUserFrontend
from pyvirtiofsd.vhost_user import codec
from pyvirtiofsd.vhost_user.backend import Backend
from pyvirtiofsd.vhost_user.connection import Connection
from pyvirtiofsd.vhost_user.device import VhostUserDevice
from pyvirtiofsd.vhost_user.protocol import FLAG_NEED_REPLY, VERSION, FrontendReq as R, ProtocolFeature as P


class EchoDevice(VhostUserDevice):
    """Replies to every chain with its readable bytes reversed."""

    num_queues = 2
    protocol_features = int(P.CONFIG | P.BACKEND_REQ | P.BACKEND_SEND_FD)

    def __init__(self):
        self.stopped = []
        self.resets = 0
        self.channel = None

    def handler(self, index):
        def serve(req):
            data = req.read_in(0, req.in_len)
            n = min(len(data), req.out_len)
            req.write_out(0, data[::-1][:n])
            req.complete(n)
        return serve

    def queue_stopped(self, index):
        self.stopped.append(index)

    def get_config(self, offset, size):
        return bytes(range(40))[offset:offset + size]

    def shmem_sizes(self):
        return [1 << 30]

    def set_backend_channel(self, channel):
        self.channel = channel

    def reset(self):
        self.resets += 1


class Session:
    def __init__(self, **frontend_kw):
        self.device = EchoDevice()
        self.backend = Backend(self.device)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.thread = threading.Thread(target=self.backend.serve, args=(Connection(theirs),), daemon=True)
        self.thread.start()
        self.fe = VhostUserFrontend(sock=ours, **frontend_kw).connect()

    def echo(self, payload: bytes, queue=1, **kw) -> bytes:
        q = self.fe.queues[queue]
        g_in = self.fe.alloc.alloc(len(payload))
        g_out = self.fe.alloc.alloc(len(payload))
        self.fe.ram.write(g_in, payload)
        head = q.add([(g_in, len(payload))], [(g_out, len(payload))], **kw)
        q.kick(force=True)
        for _ in range(200):
            used = q.get_used()
            if used:
                assert used[0] == head
                return self.fe.ram.read(g_out, used[1])
            q.wait(0.05)
        raise TimeoutError("no used element")

    def close(self):
        self.fe.close()
        self.thread.join(5)
        self.backend.close()


@pytest.fixture
def session():
    s = Session()
    yield s
    s.close()


def test_negotiation_and_echo(session):
    assert session.fe.protocol_features & P.REPLY_ACK
    assert session.fe.protocol_features & P.CONFIGURE_MEM_SLOTS
    assert session.echo(b"abcdef") == b"fedcba"
    assert session.echo(b"indirect", indirect=True) == b"tceridni"
    assert session.device.channel is None  # not asked for


@pytest.mark.parametrize("kw", [
    dict(use_mem_slots=False),                      # SET_MEM_TABLE instead of ADD_MEM_REG
    dict(event_idx=False),
    dict(want_protocol=0),                          # no protocol features at all
    dict(ram_layout=[(0, 0, 0xA0000), (0xC0000, 0xC0000, (64 << 20) - 0xC0000)]),
])
def test_variants_of_set_up(kw):
    s = Session(**kw)
    try:
        assert s.echo(b"0123456789" * 50) == (b"0123456789" * 50)[::-1]
    finally:
        s.close()


def test_get_config_and_shmem_config(session):
    assert session.fe.get_config(40) == bytes(range(40))
    assert session.fe.get_shmem_config() == [1 << 30]


def test_get_vring_base_stops_the_ring_and_reports_next_avail(session):
    for _ in range(3):
        session.echo(b"x")
    assert session.fe.stop_queue(1) == 3
    assert session.device.stopped == [1]
    assert not session.backend.vrings[1].started


def test_refused_message_gets_a_failure_ack_and_the_session_goes_on(session):
    with pytest.raises(BackendError):
        session.fe.request(R.SET_VRING_NUM, codec.VringState(1, 100).pack(), need_reply=True)
    with pytest.raises(BackendError):
        session.fe.request(R.SET_VRING_NUM, codec.VringState(77, 128).pack(), need_reply=True)
    with pytest.raises(BackendError):
        # Truncated body.
        session.fe.request(R.SET_VRING_ADDR, b"\0" * 12, need_reply=True)
    with pytest.raises(BackendError):
        session.fe.request(R.SET_FEATURES, codec.U64(1 << 63).pack(), need_reply=True)
    with pytest.raises(BackendError):
        session.fe.request(999, need_reply=True)
    assert session.echo(b"still here") == b"ereh llits"


def test_unsolicited_fds_are_closed(session):
    r, w = os.pipe()
    session.fe.request(R.SET_OWNER, fds=[w], need_reply=True)
    os.close(w)
    # The back-end closed its copy: the pipe has no writer left.
    assert os.read(r, 1) == b""
    os.close(r)


def test_backend_channel_is_kept():
    s = Session(backend_channel=True)
    try:
        assert s.device.channel is not None
        s.device.channel.send(b"ping")
        assert s.fe.backend_sock.recv(4) == b"ping"
    finally:
        s.close()


@pytest.mark.parametrize("reset", [R.RESET_DEVICE, R.RESET_OWNER])
def test_a_reset_keeps_the_backend_channel(reset):
    """QEMU sets the backend channel up once per connection and not again after a reset:
    closing it on RESET_DEVICE made a QEMU 11.1 started with -incoming print "Unexpected
    end-of-file before all data were read" (its system reset at start-up), and would leave a
    rebooted guest without DAX maps."""
    s = Session(backend_channel=True)
    try:
        channel = s.device.channel
        s.fe.request(reset, need_reply=True)
        assert s.device.resets == 1 and s.backend.backend_channel is not None
        s.fe.backend_sock.setblocking(False)
        with pytest.raises(BlockingIOError):          # no EOF: the back-end's end is open
            s.fe.backend_sock.recv(1)
        s.fe.backend_sock.setblocking(True)
        s.backend.backend_channel.send(b"ping")
        assert s.fe.backend_sock.recv(4) == b"ping" and s.device.channel is channel
    finally:
        s.close()


def test_reset_device_stops_queues_and_resets(session):
    session.fe.request(R.RESET_DEVICE, need_reply=True)
    assert session.device.resets == 1
    assert not any(v.started for v in session.backend.vrings)


def test_mem_table_with_fd_count_mismatch_is_refused(session):
    table = codec.MemTable(session.fe.ram.mem_regions() * 2)
    with pytest.raises(BackendError):
        session.fe.request(R.SET_MEM_TABLE, table.pack(), fds=[session.fe.ram.fd], need_reply=True)
    assert session.echo(b"ok") == b"ko"


def test_broken_header_ends_the_session_without_crashing():
    s = Session()
    try:
        s.fe.send_raw(struct.pack("<III", R.GET_FEATURES, 0x2, 0))  # version 2
        s.thread.join(5)
        # serve() raised CodecError in its thread: the session is over, nothing else died.
        assert not s.thread.is_alive()
    finally:
        s.close()


def test_rem_mem_reg_of_unknown_region_is_refused(session):
    region = codec.MemRegion(0x40000000, 4096, 0x1000, 0)
    with pytest.raises(BackendError):
        session.fe.request(R.REM_MEM_REG, codec.SingleMemRegion(region).pack(), need_reply=True)


def test_need_reply_on_message_with_reply_gets_one_reply(session):
    # GET_FEATURES already has a reply: REPLY_ACK must not add a second one.
    session.fe.conn.send(codec.encode(R.GET_FEATURES, b"", VERSION | FLAG_NEED_REPLY))
    reply = session.fe.recv_message()
    assert reply.request == R.GET_FEATURES and len(reply.payload) == 8
    assert session.fe.get_u64(R.GET_QUEUE_NUM) == 2  # next reply is in step


def test_close_unmaps_guest_memory():
    """After Backend.close() no mapping of the front-end's RAM is left in this process
    (other than the front-end's own)."""
    s = Session()
    ram_ino = str(os.fstat(s.fe.ram.fd).st_ino)   # this session's memfd, not another test's

    def maps():
        with open("/proc/self/maps") as f:
            return sum(1 for line in f
                       if "pyvirtiofsd-guest-ram" in line and line.split()[4] == ram_ino)

    assert s.echo(b"x") == b"x"
    assert maps() >= 2          # the front-end's mapping and the back-end's
    s.fe.close()
    s.thread.join(5)
    s.backend.close()
    assert maps() == 0          # while s (and its queues) are still alive
