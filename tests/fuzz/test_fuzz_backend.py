"""The vhost-user back-end state machine (Backend.handle) with the real virtio-fs device,
FUSE server and passthrough file system behind it, fed hostile message sequences.

Memory tables with overlapping regions, zero sizes, sizes past the fd, offsets and
addresses that wrap; rings that straddle regions, lie outside every region or are
misaligned; queue sizes that are not powers of two or huge; queue indices past the device;
fds where none belong and none where one does; features never offered; all of it before,
during and after a correct set-up, while the queue threads serve whatever the rings hold.

Every message must get a well-formed reply where the protocol wants one (a failure ack for
a refused one), ``handle`` must never raise, and after the session closes every fd the
back-end received is closed and every guest-memory mapping is gone.
"""
from __future__ import annotations

import gc
import os
import random
import struct

from hypothesis import given, strategies as st

from fdcount import fd_count
from fuzzstats import count_case
from pyvirtiofsd.frontend.memory import GuestRAM
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import Server, ServerOptions
from pyvirtiofsd.vhost_user import codec
from pyvirtiofsd.vhost_user.backend import _HAS_REPLY, Backend
from pyvirtiofsd.vhost_user.protocol import (
    FLAG_NEED_REPLY, VERSION, FrontendReq as R, ProtocolFeature as P, VirtioFeature as V)
from pyvirtiofsd.virtiofs import VirtioFsDevice

RAM = 1 << 20
HALF = RAM // 2
U64 = 2**64

# Symbolic values: resolved against the RAM's host address when the message is built.
GPAS = st.one_of(st.sampled_from([0, 0x1000, HALF, RAM, U64 - 4096, U64 - 1]), st.integers(0, 2**64 - 1))
SIZES = st.one_of(st.sampled_from([0, 1, 4096, HALF, RAM, RAM + 4096, 2**63, U64 - 1]),
                  st.integers(0, 2 * RAM))
OFFSETS = st.one_of(st.sampled_from([0, 0x1000, HALF, RAM, RAM + 1, 2**63, U64 - 4096]),
                    st.integers(0, 2 * RAM))
UVA_DELTAS = st.one_of(  # relative to the RAM's host mapping; None: an absolute garbage value
    st.sampled_from([0, 0x1000, HALF - 16, HALF - 8, HALF, RAM - 16, RAM, 1, 2, 4, 8, -4096]),
    st.integers(0, RAM), st.none())
QUEUES = st.one_of(st.integers(0, 2), st.sampled_from([3, 255, 256, 2**31]))
NUMS = st.one_of(st.sampled_from([0, 1, 2, 3, 8, 64, 100, 256, 32768, 65536, 2**32 - 1]),
                 st.integers(0, 2**32 - 1))
FD_KINDS = st.sampled_from(["eventfd", "ram", "pipe", "socket"])


def region(draw, **fixed):
    return ("region", fixed.get("gpa", draw(GPAS)), fixed.get("size", draw(SIZES)),
            fixed.get("uva", draw(UVA_DELTAS)), fixed.get("off", draw(OFFSETS)))


@st.composite
def messages(draw):
    kind = draw(st.sampled_from([
        "mem_table", "add_reg", "rem_reg", "vring_num", "vring_addr", "vring_base",
        "get_vring_base", "vring_fd", "vring_enable", "features", "protocol", "config",
        "simple", "garbage", "kick", "log_base"]))
    need_reply = draw(st.booleans())
    if kind == "mem_table":
        n = draw(st.integers(0, 9))
        regions = [region(draw) for _ in range(n)]
        fds = draw(st.lists(FD_KINDS, min_size=max(0, n - 1), max_size=n + 1))
        return ("mem_table", regions, fds, need_reply)
    if kind in ("add_reg", "rem_reg"):
        return (kind, region(draw), draw(st.lists(FD_KINDS, max_size=2)), need_reply)
    if kind in ("vring_num", "vring_base", "get_vring_base", "vring_enable"):
        return (kind, draw(QUEUES), draw(NUMS), need_reply)
    if kind == "vring_addr":
        return (kind, draw(QUEUES), [draw(UVA_DELTAS) for _ in range(3)], draw(st.integers(0, 3)),
                need_reply)
    if kind == "vring_fd":
        which = draw(st.sampled_from([R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR]))
        value = draw(st.one_of(QUEUES, st.sampled_from([0x100, 0x101, 0x1FF, 0x200, 2**63])))
        return (kind, which, value, draw(st.lists(FD_KINDS, max_size=2)), need_reply)
    if kind == "log_base":   # a dirty log: too small, past its fd, over guest RAM, no fd...
        size = draw(st.one_of(st.sampled_from([0, 1, 16, 4096, RAM // 2**15, HALF, RAM, U64 - 1]),
                              st.integers(0, 2 * RAM)))
        return (kind, size, draw(OFFSETS), draw(st.lists(FD_KINDS, max_size=2)), need_reply)
    if kind == "features":
        return (kind, draw(st.one_of(st.just("offered"), st.integers(0, 2**64 - 1))), need_reply)
    if kind == "protocol":
        return (kind, draw(st.one_of(st.just("offered"), st.integers(0, 2**64 - 1))), need_reply)
    if kind == "config":
        return (kind, draw(st.sampled_from([R.GET_CONFIG, R.SET_CONFIG])), draw(st.integers(0, 300)),
                draw(st.integers(0, 300)), draw(st.binary(max_size=300)), need_reply)
    if kind == "simple":
        return (kind, draw(st.sampled_from([
            R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.SET_OWNER, R.RESET_OWNER, R.RESET_DEVICE,
            R.GET_QUEUE_NUM, R.GET_MAX_MEM_SLOTS, R.GET_SHMEM_CONFIG, R.GET_STATUS, R.SET_STATUS,
            R.SET_LOG_BASE, R.SET_LOG_FD, R.GET_INFLIGHT_FD, R.SET_BACKEND_REQ_FD,
            R.SEND_RARP, R.IOTLB_MSG, R.SET_DEVICE_STATE_FD, R.CHECK_DEVICE_STATE])),
            draw(st.binary(max_size=64)), draw(st.lists(FD_KINDS, max_size=2)), need_reply)
    if kind == "garbage":
        return (kind, draw(st.integers(0, 2**32 - 1)), draw(st.binary(max_size=200)),
                draw(st.lists(FD_KINDS, max_size=3)), need_reply)
    return ("kick", draw(st.integers(0, 2)), draw(st.integers(0, 2**32 - 1)))


def good_setup() -> list:
    """What a correct front-end sends: the state the hostile messages then disturb."""
    msgs = [("protocol", "offered", True), ("simple", R.SET_OWNER, b"", [], True),
            ("features", "offered", True),
            ("mem_table", [("region", 0, HALF, 0, 0), ("region", HALF, HALF, HALF, HALF)],
             ["ram", "ram"], True)]
    for q in (0, 1):
        base = 0x1000 + q * 0x10000   # desc, avail, used of queue q, inside the first region
        msgs += [("vring_num", q, 64, True), ("vring_base", q, 0, True),
                 ("vring_addr", q, [base, base + 0x2000, base + 0x1000], 0, True),
                 ("vring_fd", R.SET_VRING_CALL, q, ["eventfd"], True),
                 ("vring_fd", R.SET_VRING_KICK, q, ["eventfd"], True),
                 ("vring_enable", q, 1, True)]
    return msgs


class Session:
    def __init__(self, share: str, seed: int):
        self.ram = GuestRAM(RAM, [(0, 0, HALF), (HALF, HALF, HALF)], name="fuzz-backend")
        self.fs = PassthroughFs(share)
        self.device = VirtioFsDevice(Server(self.fs, ServerOptions()), tag="fuzz",
                                     thread_pool_size=0)
        self.backend = Backend(self.device)
        self.kicks: list[int] = []
        self.rng = random.Random(seed)
        self.fds_given = 0

    def fd(self, kind: str) -> int:
        if kind == "eventfd":
            fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.kicks.append(os.dup(fd))
            return fd
        if kind == "ram":
            return os.dup(self.ram.fd)
        if kind == "pipe":
            r, w = os.pipe()
            os.close(w)
            return r
        import socket
        a, b = socket.socketpair()
        a.close()
        return b.detach()

    def uva(self, delta):
        return self.rng.getrandbits(64) if delta is None else (self.ram.host_base + delta) % U64

    def build(self, spec) -> codec.Message | None:
        kind = spec[0]
        need = spec[-1] is True
        flags = VERSION | (FLAG_NEED_REPLY if need else 0)
        fds: list[int] = []

        def reg(r):
            _, gpa, size, uva, off = r
            return codec.MemRegion(gpa, size, self.uva(uva), off)

        if kind == "mem_table":
            _, regions, kinds, _ = spec
            payload = codec.MemTable([reg(r) for r in regions]).pack()
            fds = [self.fd(k) for k in kinds]
            req = R.SET_MEM_TABLE
        elif kind in ("add_reg", "rem_reg"):
            _, r, kinds, _ = spec
            payload = codec.SingleMemRegion(reg(r)).pack()
            fds = [self.fd(k) for k in kinds]
            req = R.ADD_MEM_REG if kind == "add_reg" else R.REM_MEM_REG
        elif kind in ("vring_num", "vring_base", "get_vring_base", "vring_enable"):
            _, q, num, _ = spec
            payload = codec.VringState(q % 2**32, num).pack()
            req = {"vring_num": R.SET_VRING_NUM, "vring_base": R.SET_VRING_BASE,
                   "get_vring_base": R.GET_VRING_BASE, "vring_enable": R.SET_VRING_ENABLE}[kind]
        elif kind == "vring_addr":
            _, q, deltas, aflags, _ = spec
            desc, used, avail = (self.uva(d) for d in deltas)
            payload = codec.VringAddr(q % 2**32, aflags, desc, used, avail, 0).pack()
            req = R.SET_VRING_ADDR
        elif kind == "vring_fd":
            _, req, value, kinds, _ = spec
            payload = struct.pack("<Q", value % U64)
            fds = [self.fd(k) for k in kinds]
        elif kind in ("features", "protocol"):
            _, value, _ = spec
            if value == "offered":
                value = (self.backend.offered_features if kind == "features"
                         else self.backend.offered_protocol)
            payload = codec.U64(value).pack()
            req = R.SET_FEATURES if kind == "features" else R.SET_PROTOCOL_FEATURES
        elif kind == "config":
            _, req, offset, size, data, _ = spec
            payload = struct.pack("<III", offset, size, 0) + data
        elif kind == "log_base":
            _, size, off, kinds, _ = spec
            payload = codec.LogBase(size, off).pack()
            fds = [self.fd(k) for k in kinds]
            req = R.SET_LOG_BASE
        elif kind in ("simple", "garbage"):
            _, req, payload, kinds, _ = spec
            fds = [self.fd(k) for k in kinds]
        else:  # kick: garbage into a ring's area, then a kick on every kick fd we handed out
            _, q, value = spec
            off = 0x1000 + q * 0x10000
            raw = self.rng.randbytes(0x3000)
            self.ram.map[off:off + len(raw)] = raw
            for k in self.kicks:
                os.eventfd_write(k, 1)
            return None
        self.fds_given += len(fds)
        return codec.Message(int(req), flags, payload, fds)

    def close(self):
        self.backend.close()
        self.device.close()
        self.fs.close()
        for k in self.kicks:
            os.close(k)
        self.ram.close()


def _ram_mappings() -> int:
    gc.collect()   # a Vring frees its C queue (and the table it holds) when collected
    with open("/proc/self/maps") as f:
        return sum("fuzz-backend" in line for line in f)


def _run_session(share, seed, specs) -> None:
    s = Session(share, seed)
    try:
        for spec in specs:
            msg = s.build(spec)
            if msg is None:
                continue
            reply = s.backend.handle(msg)          # must not raise
            assert not msg.fds, "handle() left fds it did not keep"
            wants = msg.request in _HAS_REPLY or (
                msg.need_reply and s.backend.acked_protocol & P.REPLY_ACK) or (
                msg.request == R.SET_LOG_BASE and s.backend.acked_protocol & P.LOG_SHMFD)
            if not wants:
                assert reply is None, f"unasked reply to {msg.name()}"
                continue
            assert reply is not None, f"no reply to {msg.name()}"
            p = codec.Parser()
            p.feed(reply)
            r = p.next_message()
            assert r is not None and p.next_message() is None
            assert r.is_reply and r.request == msg.request and len(r.payload) == len(reply) - 12
    finally:
        s.close()


@given(seed=st.integers(0, 2**32), setup=st.booleans(),
       msgs=st.lists(messages(), min_size=1, max_size=25))
def test_hostile_message_sequences(seed, setup, msgs, fresh_dir):
    count_case("backend_sequences")
    before = fd_count()
    _run_session(fresh_dir, seed, (good_setup() if setup else []) + msgs)
    # The session's objects are gone: so must be every fd and mapping it had.
    assert _ram_mappings() == 0, "guest memory is still mapped after the session ended"
    assert fd_count() == before, "the back-end leaked file descriptors"


def test_backend_channel_fd_that_is_not_a_socket_is_closed(fresh_dir):
    """Found by this fuzzer: SET_BACKEND_REQ_FD with an eventfd was refused (ENOTSOCK) but
    the fd it carried stayed open."""
    before = fd_count()
    _run_session(fresh_dir, 0, [("simple", R.SET_BACKEND_REQ_FD, b"", ["eventfd"], True),
                                ("simple", R.SET_BACKEND_REQ_FD, b"", ["pipe"], False)])
    assert _ram_mappings() == 0
    assert fd_count() == before
