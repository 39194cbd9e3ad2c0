"""Hostile descriptor chains written raw into a real split ring (shared memfd, our C device
side), checked against a Python model of the walk (ringmodel.py).

Every case: random descriptors (loops, next out of range, zero and overflowing lengths,
buffers in holes, across regions and past the end, nested and malformed indirect tables,
chains longer than the queue) and a head (sometimes out of range).  The C side must

* classify the chain exactly as the model does (error code, readable/writable lengths);
* read exactly the bytes the chain names, and write exactly the bytes the chain names
  writable -- the whole guest RAM is compared with the model afterwards, so a stray byte
  anywhere fails the case (and under AddressSanitizer any access outside our own buffers
  aborts it);
* refuse every access that touches a hole (EFAULT) before moving any byte;
* return the chain on the used ring with a length no larger than its writable part;
* keep the queue usable afterwards, or mark it broken (head out of range) and stay off it.
"""
from __future__ import annotations

import errno
import os
import struct
import tempfile

from hypothesis import event, given, strategies as st

from fuzzstats import count_case
from pyvirtiofsd._cext import ffi, lib
from pyvirtiofsd.frontend.memory import Allocator, GuestRAM
from pyvirtiofsd.frontend.virtqueue import DriverQueue
from pyvirtiofsd.vhost_user.memory import GuestMemory
from pyvirtiofsd.vhost_user.vring import RingRequest, Vring

import ringmodel as M

KiB = 1024
# Region A, a hole, then B and C contiguous in guest-physical space but not in the memfd.
LAYOUT = [(0, 0, 64 * KiB), (0x20000, 0x10000, 256 * KiB), (0x60000, 0x50000, 192 * KiB)]
RAM = 0x80000
END = 0x90000                     # first guest-physical address past region C
RINGS = (0x20000, 0x10000)        # the allocator's area for rings: start of B
IND = [0x40000, 0x48000]          # where the indirect tables of a case are written
PATTERN_SEED = 0x5A

ADDRS = st.one_of(
    st.sampled_from([
        0x100, 64 * KiB - 16, 64 * KiB - 1,           # region A, its last bytes
        64 * KiB, 0x1FFF8,                            # the hole
        0x50000, 0x60000 - 8, 0x60000 - 1, 0x60000,   # across the B/C boundary
        END - 8, END - 1, END, 1 << 40,               # the end of RAM and past it
        2**64 - 8, 2**64 - 1, IND[0], IND[1], IND[0] + 4,
    ]),
    st.integers(0, END + 0x1000),
)
LENS = st.one_of(
    st.sampled_from([0, 1, 7, 16, 17, 64, 4096, 0x30000, 2**31, 2**32 - 1, 2**32 - 16]),
    st.integers(0, 9000),
)
FLAGS = st.one_of(st.integers(0, 7), st.sampled_from([M.F_NEXT | M.F_WRITE, 0xFFFF, 0x8]))


def descs(max_next: int, max_size: int):
    return st.lists(st.tuples(ADDRS, LENS, FLAGS, st.integers(0, max_next)),
                    min_size=1, max_size=max_size)


class Rig:
    def __init__(self, num: int):
        self.ram = GuestRAM(RAM, LAYOUT, name="fuzz-ring")
        self.alloc = Allocator(*RINGS)
        self.drv = DriverQueue(1, num, self.ram, self.alloc, event_idx=False)
        self.num = num
        self.mem = GuestMemory()
        self.mem.set_table(self.ram.mem_regions(), [self.ram.fd] * len(LAYOUT))
        self.vring = Vring(1)
        self.vring.set_num(num)
        self.vring.set_mem(self.mem.table)
        self.vring.set_addr(*self.drv.addr_uva())
        assert lib.pvfs_vq_start(self.vring.vq) == 0
        self._p = ffi.new("struct pvfs_req **")

    def pop(self):
        rc = lib.pvfs_vq_pop(self.vring.vq, self._p)
        return rc, (self._p[0] if rc == 1 else None)

    def used(self, k: int) -> tuple[int, int]:
        return struct.unpack("<II", self.ram.read(self.drv.used + 4 + 8 * (k % self.num), 8))

    def snapshot(self) -> bytearray:
        return bytearray(self.ram.map[:])

    def close(self):
        self.vring.close()
        self.mem.close()
        self.drv.close()
        self.ram.close()


def _fill(rig: Rig) -> None:
    """A recognisable byte pattern everywhere except the rings' area."""
    data = bytes((i * 7 + PATTERN_SEED) & 0xFF for i in range(RAM))
    lo = 0x10000 + 0x8000  # memfd offset of IND[0]: rings (at the start of B) stay as set up
    rig.ram.map[lo:] = data[lo:]


def _check_data(rig: Rig, ring_req, walk: M.Walk, tmpdir: str) -> None:
    mem = M.Memory(LAYOUT, rig.snapshot())
    r = RingRequest(ring_req, 1)
    ins, outs = M.area(walk, False), M.area(walk, True)
    cap = 1 << 20   # data checks on the first MiB of each area (lengths may be 4 GiB)

    # Readable area: exactly the named bytes, or EFAULT when a hole is touched.
    n_in = min(walk.in_len, cap)
    if M.has_hole(ins, 0, n_in):
        try:
            r.read_in(0, n_in)
            raise AssertionError("read_in through a hole succeeded")
        except OSError as e:
            assert e.errno == errno.EFAULT
    else:
        assert r.read_in(0, n_in) == M.read_area(mem, ins)[:n_in]

    # Writable area: the pattern lands exactly where the model puts it, nowhere else.
    n_out = min(walk.out_len, cap)
    payload = bytes((i * 13 + 1) & 0xFF for i in range(n_out))
    if M.has_hole(outs, 0, n_out):
        try:
            r.write_out(0, payload)
            raise AssertionError("write_out through a hole succeeded")
        except OSError as e:
            assert e.errno == errno.EFAULT
    else:
        r.write_out(0, payload)
        M.write_area(mem, outs, payload)
    assert rig.snapshot() == mem.data, "guest memory changed outside the writable buffers"

    # File data straight into / out of guest memory.
    fd, path = tempfile.mkstemp(dir=tmpdir)
    try:
        content = bytes((i * 31 + 5) & 0xFF for i in range(n_out))
        os.pwrite(fd, content, 0)
        if M.has_hole(outs, 0, n_out):
            try:
                r.out_from_fd(fd, 0, n_out, 0)
                raise AssertionError("preadv through a hole succeeded")
            except OSError as e:
                assert e.errno == errno.EFAULT
        else:
            assert r.out_from_fd(fd, 0, n_out, 0) == n_out
            M.write_area(mem, outs, content)
        assert rig.snapshot() == mem.data, "preadv wrote outside the writable buffers"
        if M.has_hole(ins, 0, n_in):
            try:
                r.in_to_fd(fd, 0, n_in, 0)
                raise AssertionError("pwritev through a hole succeeded")
            except OSError as e:
                assert e.errno == errno.EFAULT
        else:
            assert r.in_to_fd(fd, 0, n_in, 0) == n_in
            assert os.pread(fd, n_in, 0) == M.read_area(mem, ins)[:n_in]
        assert rig.snapshot() == mem.data, "pwritev changed guest memory"
    finally:
        os.close(fd)
        os.unlink(path)
    r._req = None  # completed by the caller through lib


def _follow_up(rig: Rig, k: int) -> None:
    """A well-formed request (5 readable, 8 writable bytes) through an indirect table, so
    it needs one ring descriptor whatever the queue size; it is served normally."""
    table = IND[1] + 0x4000
    rig.ram.write(table, M.DESC.pack(0x100, 5, M.F_NEXT, 1) + M.DESC.pack(0x200, 8, M.F_WRITE, 0))
    rig.drv.write_desc(0, table, 32, M.F_INDIRECT, 0)
    rig.drv.publish_head(0)
    rc, req = rig.pop()
    assert rc == 1 and req.err == 0 and (req.in_len, req.out_len) == (5, 8)
    lib.pvfs_req_complete(req, 3)
    assert rig.used(k) == (0, 3)


def _run_case(num, table, indirect_tables, head, used_len, tmpdir):
    rig = Rig(num)
    try:
        _fill(rig)
        for i, (addr, length, flags, nxt) in enumerate(table[:num]):
            rig.drv.write_desc(i, addr, length, flags, nxt)
        for base, entries in zip(IND, indirect_tables):
            raw = b"".join(M.DESC.pack(a, n, f, x) for a, n, f, x in entries)
            rig.ram.write(base, raw[:0x8000])
        rig.drv.publish_head(head)
        rc, req = rig.pop()
        if head >= num:
            assert rc == -errno.EIO and rig.vring.broken
            rig.drv.write_desc(0, 0x100, 1, 0, 0)
            rig.drv.publish_head(0)
            assert rig.pop()[0] == -errno.EIO, "a broken queue was read again"
            return
        assert rc == 1
        mem = M.Memory(LAYOUT, rig.snapshot())
        walk = M.walk(mem, rig.ram.offset(rig.drv.desc), num, head)
        assert (req.err, req.in_len, req.out_len) == (walk.err, walk.in_len, walk.out_len), \
            f"C says {(req.err, req.in_len, req.out_len)}, model {(walk.err, walk.in_len, walk.out_len)}"
        event(f"chain error {walk.err}")
        if not walk.hard:
            _check_data(rig, req, walk, tmpdir)
        lib.pvfs_req_complete(req, used_len)
        assert rig.drv.used_idx() == 1
        assert rig.used(0) == (head, min(used_len, walk.out_len))
        # The queue goes on: a well-formed chain after the hostile one is served.
        _follow_up(rig, 1)
    finally:
        rig.close()


@given(num=st.sampled_from([1, 2, 4, 16]), data=st.data())
def test_raw_descriptor_chains(num, data, fresh_dir):
    count_case("descriptor_chains")
    table = data.draw(descs(max_next=2 * num, max_size=num), label="table")
    ind = data.draw(st.lists(descs(max_next=40, max_size=40), max_size=2), label="indirect")
    # Point some descriptors at the indirect tables with plausible lengths.
    if ind and data.draw(st.booleans()):
        k = data.draw(st.integers(0, len(table) - 1))
        which = data.draw(st.integers(0, len(ind) - 1))
        extra = data.draw(st.sampled_from([0, 1, 8, 16]))
        a, _, f, x = table[k]
        table[k] = (IND[which], 16 * len(ind[which]) + extra, f | M.F_INDIRECT, x)
    head = data.draw(st.one_of(st.integers(0, num - 1), st.integers(num, 2 * num + 3)), label="head")
    used_len = data.draw(st.sampled_from([0, 1, 16, 2**32 - 1]))
    _run_case(num, table, ind, head, used_len, fresh_dir)


@given(data=st.data())
def test_long_and_looping_indirect_tables(data, fresh_dir):
    """Indirect tables of up to ~2000 entries: loops, chains longer than the table, more
    buffers than one request may carry (IOV_MAX), lengths that sum past 4 GiB."""
    count_case("indirect_long")
    n = data.draw(st.integers(1, 2000))
    kind = data.draw(st.sampled_from(["loop", "straight", "bigsum", "mixed"]))
    entries = []
    for i in range(n):
        if kind == "loop":
            entries.append((0x100, 1, M.F_NEXT, data.draw(st.integers(0, n - 1)) if i == n - 1 else i + 1))
        elif kind == "straight":
            entries.append((0x100 + i, 1, M.F_NEXT if i < n - 1 else 0, i + 1))
        elif kind == "bigsum":
            entries.append((0x100, 2**31 + i, M.F_NEXT if i < n - 1 else 0, i + 1))
        else:
            entries.append(data.draw(st.tuples(ADDRS, LENS, FLAGS, st.integers(0, n))))
    rig_table = [(IND[0], 16 * n, M.F_INDIRECT, 0)]
    # The tables live at IND[0]; 2000 entries need 32000 bytes: inside region B.
    rig = None
    try:
        rig = Rig(8)
        _fill(rig)
        rig.ram.write(IND[0], b"".join(M.DESC.pack(*e) for e in entries))
        rig.drv.write_desc(0, *rig_table[0])
        rig.drv.publish_head(0)
        rc, req = rig.pop()
        assert rc == 1
        walk = M.walk(M.Memory(LAYOUT, rig.snapshot()), rig.ram.offset(rig.drv.desc), 8, 0)
        assert (req.err, req.in_len, req.out_len) == (walk.err, walk.in_len, walk.out_len)
        event(f"{kind}: chain error {walk.err}")
        if not walk.hard:
            _check_data(rig, req, walk, fresh_dir)
        lib.pvfs_req_complete(req, 0)
    finally:
        if rig is not None:
            rig.close()
