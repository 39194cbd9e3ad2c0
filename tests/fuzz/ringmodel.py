"""A Python model of how the device walks a descriptor chain (cext/vq.c ``walk_chain``),
written from the virtio spec's rules and our documented limits, for differential fuzzing:
the C walker and this model must agree on every chain, and the C data functions may touch
exactly the bytes the model says the chain names -- nothing else in guest memory.
"""
from __future__ import annotations

import dataclasses
import struct

from pyvirtiofsd._cext import lib

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
DESC = struct.Struct("<QIHH")
MAX_IOV = 1024          # PVFS_MAX_IOV
MAX_INDIRECT = 32768    # PVFS_VQ_MAX_SIZE descriptors in one indirect table
U32 = 1 << 32
U64 = 1 << 64


@dataclasses.dataclass
class Buffer:
    gpa: int
    length: int
    writable: bool
    segments: list[tuple[int, int]] | None   # (memfd offset, length); None: a hole


@dataclasses.dataclass
class Walk:
    err: int
    buffers: list[Buffer]

    @property
    def in_len(self) -> int:
        return 0 if self.hard else sum(b.length for b in self.buffers if not b.writable)

    @property
    def out_len(self) -> int:
        return 0 if self.hard else sum(b.length for b in self.buffers if b.writable)

    @property
    def hard(self) -> bool:
        """A refused chain: no buffers at all (a soft BAD_ADDR keeps them, with holes)."""
        return self.err not in (0, lib.PVFS_CHAIN_BAD_ADDR)


class Memory:
    """Guest-physical layout over one memfd: [(gpa, memfd offset, size)], and its bytes."""

    def __init__(self, layout: list[tuple[int, int, int]], data: bytes | bytearray):
        self.layout = sorted(layout)
        self.data = data

    def translate(self, gpa: int, length: int, room: int) -> list[tuple[int, int]] | str:
        """pvfs_mem_gpa_to_iov: the memfd pieces of [gpa, gpa+length) in at most ``room``
        iovecs, or "EFAULT" (a byte is unmapped, or the range wraps) / "E2BIG" -- whichever
        the C loop meets first."""
        if length and gpa + length >= U64:
            return "EFAULT"
        out: list[tuple[int, int]] = []
        while length:
            for rgpa, off, size in self.layout:
                if rgpa <= gpa < rgpa + size:
                    break
            else:
                return "EFAULT"
            if len(out) == room:
                return "E2BIG"
            chunk = min(length, rgpa + size - gpa)
            out.append((off + gpa - rgpa, chunk))
            gpa += chunk
            length -= chunk
        return out

    def contiguous(self, gpa: int, length: int) -> int | None:
        """memfd offset of a range inside one region (pvfs_mem_gpa_to_ptr), else None."""
        for rgpa, off, size in self.layout:
            if rgpa <= gpa < rgpa + size and length <= size - (gpa - rgpa):
                return off + gpa - rgpa
        return None

    def desc(self, memfd_off: int, i: int) -> tuple[int, int, int, int]:
        return DESC.unpack_from(self.data, memfd_off + 16 * i)


def walk(mem: Memory, table_off: int, num: int, head: int) -> Walk:
    """Walk the chain at ``head`` of the ring's descriptor table (at memfd ``table_off``)."""
    bufs: list[Buffer] = []
    table, size, i, count, indirect = table_off, num, head, 0, False
    total = {False: 0, True: 0}
    iovs = 0
    n_out_iovs = 0
    holes = False

    def done(err: int) -> Walk:
        if err == 0 and holes:
            err = lib.PVFS_CHAIN_BAD_ADDR
        return Walk(err, bufs)

    while True:
        addr, length, flags, nxt = mem.desc(table, i)
        count += 1
        if count > size:
            return done(lib.PVFS_CHAIN_TOO_LONG)
        if flags & F_INDIRECT:
            if indirect:
                return done(lib.PVFS_CHAIN_NESTED_INDIRECT)
            if flags & F_NEXT or length == 0 or length % 16 or length // 16 > MAX_INDIRECT:
                return done(lib.PVFS_CHAIN_BAD_INDIRECT)
            off = mem.contiguous(addr, length)
            if off is None or off % 8:
                return done(lib.PVFS_CHAIN_BAD_INDIRECT)
            table, size, i, count, indirect = off, length // 16, 0, 0, True
            continue
        writable = bool(flags & F_WRITE)
        if not writable and n_out_iovs:
            return done(lib.PVFS_CHAIN_READ_AFTER_WRITE)
        total[writable] += length
        if total[writable] >= U32:
            return done(lib.PVFS_CHAIN_TOO_BIG)
        if length:
            segs = mem.translate(addr, length, MAX_IOV - iovs)
            if segs == "E2BIG" or (segs == "EFAULT" and iovs == MAX_IOV):
                return done(lib.PVFS_CHAIN_TOO_MANY_IOV)
            if segs == "EFAULT":
                segs, holes = None, True
            need = 1 if segs is None else len(segs)
            iovs += need
            if writable:
                n_out_iovs += need
            bufs.append(Buffer(addr, length, writable, segs))
        if not flags & F_NEXT:
            return done(0)
        i = nxt
        if i >= size:
            return done(lib.PVFS_CHAIN_BAD_NEXT)


def area(walk_: Walk, writable: bool) -> list[Buffer]:
    return [b for b in walk_.buffers if b.writable == writable]


def has_hole(bufs: list[Buffer], offset: int, size: int) -> bool:
    """Does [offset, offset+size) of this area touch a hole?"""
    pos = 0
    for b in bufs:
        if size and pos < offset + size and offset < pos + b.length and b.segments is None:
            return True
        pos += b.length
    return False


def read_area(mem: Memory, bufs: list[Buffer]) -> bytes:
    return b"".join(bytes(mem.data[o:o + n]) for b in bufs for o, n in b.segments)


def write_area(mem: Memory, bufs: list[Buffer], data: bytes) -> None:
    """Apply ``data`` to the area in chain order (later buffers win where they alias)."""
    pos = 0
    for b in bufs:
        for o, n in b.segments:
            piece = data[pos:pos + n]
            mem.data[o:o + len(piece)] = piece
            pos += n
            if pos >= len(data):
                return
