"""The C split virtqueue (device side) against our C driver side, on real shared memory
(a memfd mapped twice, as front-end and back-end would), without sockets or threads."""
import os
import struct

import pytest

from pyvirtiofsd import _testkit
from pyvirtiofsd._cext import ffi, lib
from pyvirtiofsd.frontend.memory import Allocator, GuestRAM
from pyvirtiofsd.frontend.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    DriverQueue,
)
from pyvirtiofsd.vhost_user.memory import GuestMemory
from pyvirtiofsd.vhost_user.vring import RingRequest, Vring

RAM = 4 << 20
# Two regions aliasing one memfd at different offsets, with a hole between them, like
# QEMU's table for a PC (0-640K and 768K-...).
LAYOUT = [(0, 0, 0xA0000), (0xC0000, 0xC0000, RAM - 0xC0000)]


class Rig:
    def __init__(self, size=8, event_idx=False, ram=RAM):
        self.ram = GuestRAM(ram, [(0, 0, 0xA0000), (0xC0000, 0xC0000, ram - 0xC0000)])
        self.alloc = Allocator(0xC0000, ram - 0xC0000)
        self.drv = DriverQueue(1, size, self.ram, self.alloc, event_idx)
        self.mem = GuestMemory()
        self.mem.set_table(self.ram.mem_regions(), [self.ram.fd, self.ram.fd])
        self.vring = Vring(1)
        self.vring.set_num(size)
        self.vring.set_mem(self.mem.table)
        self.vring.set_addr(*self.drv.addr_uva())
        self.vring.set_event_idx(event_idx)
        self.call = os.eventfd(0, os.EFD_NONBLOCK)
        self.vring.set_call_fd(os.dup(self.call))
        assert lib.pvfs_vq_start(self.vring.vq) == 0
        self._p = ffi.new("struct pvfs_req **")

    def pop(self):
        rc = lib.pvfs_vq_pop(self.vring.vq, self._p)
        return (rc, self._p[0]) if rc == 1 else (rc, None)

    def buf(self, data: bytes | int):
        size = data if isinstance(data, int) else len(data)
        gpa = self.alloc.alloc(size)
        if not isinstance(data, int):
            self.ram.write(gpa, data)
        return gpa, size

    def signalled(self) -> bool:
        try:
            return os.eventfd_read(self.call) > 0
        except BlockingIOError:
            return False

    def close(self):
        self.vring.close()
        self.mem.close()
        os.close(self.call)


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_pop_read_write_complete_round_trip(rig):
    out = rig.buf(b"hello, device")
    inb = rig.buf(32)
    head = rig.drv.add([out], [inb])
    rc, req = rig.pop()
    assert rc == 1 and req.err == 0 and req.head == head
    assert (req.in_len, req.out_len) == (13, 32)
    r = RingRequest(req, 1)
    assert r.read_in(0, 100) == b"hello, device"
    assert r.read_in(7, 3) == b"dev"
    r.write_out(0, b"reply")
    with pytest.raises(ValueError):
        r.write_out(30, b"too long")
    r.complete(5)
    assert rig.drv.get_used() == (head, 5)
    assert rig.ram.read(inb[0], 5) == b"reply"
    assert rig.signalled()
    assert rig.pop() == (0, None)


def test_buffers_split_across_descriptors_and_regions(rig):
    # A readable buffer in the low region, one in the high region; a writable area in
    # 3-byte pieces: reads and writes must follow the chain, not assume contiguity.
    low = 0x1000
    rig.ram.write(low, b"abc")
    high = rig.buf(b"defgh")
    pieces = [rig.buf(3) for _ in range(4)]
    rig.drv.add([(low, 3), high], pieces)
    rc, req = rig.pop()
    r = RingRequest(req, 1)
    assert r.in_len == 8 and r.out_len == 12 and r.read_in(0, 8) == b"abcdefgh"
    assert r.read_in(2, 4) == b"cdef"
    r.write_out(1, b"0123456789")
    r.complete(11)
    assert b"".join(rig.ram.read(g, 3) for g, _ in pieces)[1:11] == b"0123456789"


def test_preadv_pwritev_move_file_data_straight_into_guest_memory(rig, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 64)
    fd = os.open(path, os.O_RDWR)
    try:
        pieces = [rig.buf(4096) for _ in range(4)]
        rig.drv.add([rig.buf(b"hdr")], pieces)
        rc, req = rig.pop()
        r = RingRequest(req, 1)
        assert r.out_from_fd(fd, 100, 10000, 5) == 10000
        data = b"".join(rig.ram.read(g, 4096) for g, _ in pieces)
        assert data[100:10100] == (bytes(range(256)) * 64)[5:10005]
        # Short read at end of file.
        assert r.out_from_fd(fd, 0, 16384, 16384 - 10) == 10
        r.complete(0)

        payload = os.urandom(9000)
        rig.drv.add([rig.buf(b"HEADER"), rig.buf(payload[:5000]), rig.buf(payload[5000:])], [])
        rc, req = rig.pop()
        r = RingRequest(req, 1)
        assert r.in_to_fd(fd, 6, 9000, 3) == 9000
        with pytest.raises(OSError):
            r.in_to_fd(fd, 6, 9001, 3)  # asks for more than the request carries
        r.complete(0)
        assert os.pread(fd, 9000, 3) == payload
    finally:
        os.close(fd)


def test_indirect_table(rig):
    inb = rig.buf(64)
    head = rig.drv.add([rig.buf(b"in-one"), rig.buf(b"in-two")], [inb], indirect=True)
    rc, req = rig.pop()
    assert req.err == 0 and req.head == head
    r = RingRequest(req, 1)
    assert r.read_in(0, 12) == b"in-onein-two"
    r.write_out(0, b"ok")
    r.complete(2)
    assert rig.drv.get_used() == (head, 2)


def chain_error(rig, descs, head=0):
    for i, (addr, length, flags, nxt) in enumerate(descs):
        rig.drv.write_desc(i, addr, length, flags, nxt)
    rig.drv.publish_head(head)
    rc, req = rig.pop()
    assert rc == 1
    err = req.err
    assert (req.in_len, req.out_len) == (0, 0)
    lib.pvfs_req_complete(req, 77)
    # The chain goes back to the driver with used length 0 (not what we asked), and the
    # queue keeps working.
    used = rig.drv.used_idx()
    assert used >= 1
    return err


def test_loop_is_an_error_on_that_request_only(rig):
    g, _ = rig.buf(16)
    assert chain_error(rig, [(g, 4, VRING_DESC_F_NEXT, 1), (g, 4, VRING_DESC_F_NEXT, 0)]) == lib.PVFS_CHAIN_TOO_LONG
    # Still serving.
    rig.drv.add([rig.buf(b"x")], [rig.buf(8)])
    assert rig.pop()[1].err == 0


@pytest.mark.parametrize("addr", [
    RAM + 0x100000,           # past the end of guest memory
    0xA0000 + 8,              # in the hole between the regions
    RAM - 8,                  # straddling the end of the last region
    2**64 - 8,                # address + length overflow 64 bits
])
def test_buffer_outside_guest_memory_is_a_hole_that_refuses_access(rig, addr):
    hdr = rig.buf(b"header")
    out = rig.buf(16)
    rig.drv.write_desc(0, hdr[0], hdr[1], VRING_DESC_F_NEXT, 1)
    rig.drv.write_desc(1, addr, 16, VRING_DESC_F_NEXT, 2)
    rig.drv.write_desc(2, out[0], out[1], VRING_DESC_F_WRITE, 0)
    rig.drv.publish_head(0)
    rc, req = rig.pop()
    # The request keeps its shape: the reachable parts work, the hole refuses access.
    assert req.err == lib.PVFS_CHAIN_BAD_ADDR and (req.in_len, req.out_len) == (22, 16)
    r = RingRequest(req, 1)
    assert r.read_in(0, 6) == b"header"
    with pytest.raises(OSError) as e:
        r.read_in(0, 7)
    assert e.value.errno == 14
    with pytest.raises(OSError):
        r.in_to_fd(0, 6, 16, 0)   # never reaches the fd: no partial write
    r.write_out(0, b"error reply")
    r.complete(11)
    assert rig.drv.get_used() == (0, 11)
    assert rig.ram.read(out[0], 11) == b"error reply"


def test_next_outside_table(rig):
    g, _ = rig.buf(16)
    assert chain_error(rig, [(g, 4, VRING_DESC_F_NEXT, 200)]) == lib.PVFS_CHAIN_BAD_NEXT


def test_readable_after_writable(rig):
    g, _ = rig.buf(16)
    assert chain_error(rig, [(g, 4, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1), (g, 4, 0, 0)]) \
        == lib.PVFS_CHAIN_READ_AFTER_WRITE


def test_nested_and_malformed_indirect(rig):
    table, _ = rig.buf(64)
    inner, _ = rig.buf(32)
    # The indirect table itself contains an INDIRECT descriptor.
    rig.ram.write(table, struct.pack("<QIHH", inner, 32, VRING_DESC_F_INDIRECT, 0))
    assert chain_error(rig, [(table, 16, VRING_DESC_F_INDIRECT, 0)]) == lib.PVFS_CHAIN_NESTED_INDIRECT
    assert chain_error(rig, [(table, 15, VRING_DESC_F_INDIRECT, 0)]) == lib.PVFS_CHAIN_BAD_INDIRECT
    assert chain_error(rig, [(table, 0, VRING_DESC_F_INDIRECT, 0)]) == lib.PVFS_CHAIN_BAD_INDIRECT
    assert chain_error(rig, [(table, 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1)]) \
        == lib.PVFS_CHAIN_BAD_INDIRECT
    assert chain_error(rig, [(RAM * 2, 16, VRING_DESC_F_INDIRECT, 0)]) == lib.PVFS_CHAIN_BAD_INDIRECT


def test_indirect_loop(rig):
    table, _ = rig.buf(32)
    g, _ = rig.buf(8)
    rig.ram.write(table, struct.pack("<QIHH", g, 8, VRING_DESC_F_NEXT, 1)
                  + struct.pack("<QIHH", g, 8, VRING_DESC_F_NEXT, 0))
    assert chain_error(rig, [(table, 32, VRING_DESC_F_INDIRECT, 0)]) == lib.PVFS_CHAIN_TOO_LONG


def test_lengths_that_overflow_32_bits():
    # Two 3 GiB descriptors (sparse memory, never touched): the total does not fit the
    # 32-bit lengths of the used ring and of FUSE.
    r = Rig(ram=4 << 30)
    try:
        assert chain_error(r, [(0xC0000, 3 << 30, VRING_DESC_F_NEXT, 1),
                               (0xC0000, 3 << 30, 0, 0)]) == lib.PVFS_CHAIN_TOO_BIG
    finally:
        r.close()


def test_more_iovecs_than_preadv_takes():
    r = Rig(size=2048)
    try:
        table, _ = r.buf(16 * 1100)
        g, _ = r.buf(8)
        raw = b"".join(struct.pack("<QIHH", g, 1, VRING_DESC_F_NEXT, i + 1) for i in range(1099))
        raw += struct.pack("<QIHH", g, 1, 0, 0)
        r.ram.write(table, raw)
        assert chain_error(r, [(table, 16 * 1100, VRING_DESC_F_INDIRECT, 0)]) == lib.PVFS_CHAIN_TOO_MANY_IOV
    finally:
        r.close()


def test_head_index_out_of_range_breaks_the_queue(rig):
    rig.drv.publish_head(100)  # size is 8
    assert rig.pop() == (-5, None)  # -EIO
    assert rig.vring.broken
    # It stays broken: nothing more is read from a ring the driver corrupted.
    rig.drv.add([rig.buf(b"x")], [rig.buf(8)])
    assert rig.pop() == (-5, None)


def test_avail_index_jumping_past_the_queue_size_breaks_the_queue(rig):
    for _ in range(9):
        rig.drv.publish_head(0)
    assert rig.pop()[0] == -5 and rig.vring.broken


def test_stopped_queue_is_not_touched_and_drops_completions(rig):
    rig.drv.add([rig.buf(b"x")], [rig.buf(8)])
    rc, req = rig.pop()
    lib.pvfs_vq_stop(rig.vring.vq)
    lib.pvfs_req_complete(req, 1)
    assert rig.drv.used_idx() == 0
    rig.drv.add([rig.buf(b"y")], [rig.buf(8)])
    assert rig.pop()[0] == -5
    assert lib.pvfs_vq_get_base(rig.vring.vq) == 1


def test_event_idx_suppresses_interrupts_until_used_event():
    r = Rig(event_idx=True)
    try:
        heads = [r.drv.add([r.buf(b"q")], [r.buf(8)]) for _ in range(3)]
        reqs = [r.pop()[1] for _ in heads]
        # Driver asks to be told about the first used element only (used_event = 0).
        assert r.drv.wait(0) is False  # enables callbacks: used_event = 0
        lib.pvfs_req_complete(reqs[0], 0)
        assert r.signalled()
        lib.pvfs_req_complete(reqs[1], 0)
        assert not r.signalled()   # used_event 0 already passed
        assert r.drv.get_used() and r.drv.get_used()
        r.drv.wait(0)              # used_event = 2
        lib.pvfs_req_complete(reqs[2], 0)
        assert r.signalled()
        # Device side: publishing avail_event and re-checking finds late buffers.
        assert lib.pvfs_vq_enable_notify(r.vring.vq) == 0
        r.drv.add([r.buf(b"z")], [r.buf(8)])
        assert lib.pvfs_vq_enable_notify(r.vring.vq) == 1
    finally:
        r.close()


def test_event_idx_kick_suppression_on_the_driver_side():
    r = Rig(event_idx=True)
    try:
        lib.pvfs_vq_enable_notify(r.vring.vq)  # avail_event = 0: kick for the first buffer
        r.drv.add([r.buf(b"a")], [r.buf(8)])
        assert _testkit.lib.pvfs_drv_kick_needed(r.drv._drv) == 1
        r.drv.add([r.buf(b"b")], [r.buf(8)])
        assert _testkit.lib.pvfs_drv_kick_needed(r.drv._drv) == 0  # device has not asked again
    finally:
        r.close()


def test_memory_table_swap_keeps_in_flight_requests_valid(rig):
    g = rig.buf(b"survives")
    rig.drv.add([g], [rig.buf(8)])
    rc, req = rig.pop()
    # A new table (same memory, new mapping) replaces the old one while the request is in
    # flight; the request keeps reading through the mapping it was translated with.
    rig.mem.set_table(rig.ram.mem_regions(), [rig.ram.fd, rig.ram.fd])
    rig.vring.set_mem(rig.mem.table)
    assert RingRequest(req, 1).read_in(0, 8) == b"survives"
    lib.pvfs_req_complete(req, 0)
    rig.drv.add([rig.buf(b"next")], [rig.buf(8)])
    rc, req = rig.pop()
    assert RingRequest(req, 1).read_in(0, 4) == b"next"
    lib.pvfs_req_complete(req, 0)


def test_region_larger_than_its_file_is_refused(tmp_path):
    from pyvirtiofsd.vhost_user.codec import MemRegion
    from pyvirtiofsd.vhost_user.memory import GuestMemoryError

    fd = os.memfd_create("small")
    os.ftruncate(fd, 4096)
    mem = GuestMemory()
    try:
        with pytest.raises(GuestMemoryError):
            mem.set_table([MemRegion(0, 8192, 0x1000, 0)], [fd])
        with pytest.raises(GuestMemoryError):
            mem.set_table([MemRegion(0, 4096, 0x1000, 4096)], [fd])
        mem.set_table([MemRegion(0, 4096, 0x1000, 0)], [fd])
        assert mem.regions[0].memory_size == 4096
    finally:
        mem.close()
        os.close(fd)


def test_overlapping_regions_are_refused():
    from pyvirtiofsd.vhost_user.codec import MemRegion
    from pyvirtiofsd.vhost_user.memory import GuestMemoryError

    fd = os.memfd_create("ram")
    os.ftruncate(fd, 1 << 20)
    mem = GuestMemory()
    try:
        with pytest.raises(GuestMemoryError):
            mem.set_table([MemRegion(0, 8192, 0, 0), MemRegion(4096, 8192, 0x10000, 0)], [fd, fd])
        assert mem.regions == []
    finally:
        mem.close()
        os.close(fd)
