"""Sans-IO codec for vhost-user messages: bytes and fds in, typed messages out, and back.

Nothing here touches a socket, so the whole codec can be driven by tests and fuzzers.
Both directions use it: the back-end decodes requests and encodes replies, and our own
front-end (``pyvirtiofsd.frontend``) does the opposite.  A message that does not parse
raises :class:`CodecError`; the caller decides whether that ends the connection.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import ClassVar

from .protocol import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER_SIZE,
    MAX_MEM_REGIONS,
    MAX_PAYLOAD,
    VERSION,
    VERSION_MASK,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    BackendReq,
    FrontendReq,
)

HEADER = struct.Struct("<III")  # request, flags, size


class CodecError(ValueError):
    """A message that breaks the vhost-user wire format."""


@dataclasses.dataclass
class Message:
    """One vhost-user message: header fields, raw payload and the fds that came with it."""

    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: list[int] = dataclasses.field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    def name(self, backend_channel: bool = False) -> str:
        ids = BackendReq if backend_channel else FrontendReq
        try:
            return ids(self.request).name
        except ValueError:
            return f"UNKNOWN_{self.request}"


def encode(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    """Header + payload, ready for ``sendmsg``."""
    if len(payload) > MAX_PAYLOAD:
        raise CodecError(f"payload of {len(payload)} bytes is too large")
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_reply(request: int, payload: bytes) -> bytes:
    """A reply: flags are exactly VERSION|REPLY, which QEMU checks for equality."""
    return encode(request, payload, VERSION | FLAG_REPLY)


def decode_header(data: bytes) -> tuple[int, int, int]:
    """Validate a 12-byte header and return (request, flags, size)."""
    if len(data) != HEADER_SIZE:
        raise CodecError(f"header of {len(data)} bytes, expected {HEADER_SIZE}")
    request, flags, size = HEADER.unpack(data)
    if flags & VERSION_MASK != VERSION:
        raise CodecError(f"unsupported protocol version {flags & VERSION_MASK}")
    if flags & ~(VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY):
        raise CodecError(f"unknown header flags {flags:#x}")
    if size > MAX_PAYLOAD:
        raise CodecError(f"payload size {size} exceeds {MAX_PAYLOAD}")
    return request, flags, size


class Parser:
    """Incremental parser: feed it bytes (and the fds that came with them), take messages.

    The fds of a message are the ones fed with its first byte, which is how SCM_RIGHTS data
    arrives with the header's ``recvmsg``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending_fds: list[int] = []
        self._header: tuple[int, int, int] | None = None
        self._fds: list[int] = []

    def feed(self, data: bytes, fds: list[int] | None = None) -> None:
        if fds:
            self._pending_fds.extend(fds)
        self._buf += data

    def next_message(self) -> Message | None:
        if self._header is None:
            if len(self._buf) < HEADER_SIZE:
                return None
            self._header = decode_header(bytes(self._buf[:HEADER_SIZE]))
            del self._buf[:HEADER_SIZE]
            self._fds, self._pending_fds = self._pending_fds, []
        request, flags, size = self._header
        if len(self._buf) < size:
            return None
        payload = bytes(self._buf[:size])
        del self._buf[:size]
        self._header = None
        return Message(request, flags, payload, self._fds)

    def wanted(self) -> int:
        """Bytes still missing for the next step (the header, then the payload), so a
        socket reader can take exactly one message and leave the next one's fds alone."""
        if self._header is None:
            return max(HEADER_SIZE - len(self._buf), 0)
        return max(self._header[2] - len(self._buf), 0)


# ---- payload bodies -------------------------------------------------------------------


class Body:
    """A payload layout.  Subclasses define FORMAT (a struct.Struct) and fields in order."""

    FORMAT: ClassVar[struct.Struct]

    @classmethod
    def unpack(cls, payload: bytes):
        if len(payload) < cls.FORMAT.size:
            raise CodecError(f"{cls.__name__} needs {cls.FORMAT.size} bytes, got {len(payload)}")
        return cls(*cls.FORMAT.unpack_from(payload))

    def pack(self) -> bytes:
        return self.FORMAT.pack(*dataclasses.astuple(self))


@dataclasses.dataclass
class U64(Body):
    FORMAT = struct.Struct("<Q")
    value: int


@dataclasses.dataclass
class VringState(Body):
    FORMAT = struct.Struct("<II")
    index: int
    num: int


@dataclasses.dataclass
class VringAddr(Body):
    FORMAT = struct.Struct("<IIQQQQ")
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclasses.dataclass
class MemRegion(Body):
    FORMAT = struct.Struct("<QQQQ")
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int


@dataclasses.dataclass
class MemTable:
    """SET_MEM_TABLE: a count, padding, then that many regions (QEMU sends only those)."""

    regions: list[MemRegion]

    @classmethod
    def unpack(cls, payload: bytes) -> MemTable:
        if len(payload) < 8:
            raise CodecError("memory table shorter than its header")
        (n,) = struct.unpack_from("<I", payload)
        if n > MAX_MEM_REGIONS:
            raise CodecError(f"{n} memory regions, at most {MAX_MEM_REGIONS}")
        if len(payload) < 8 + 32 * n:
            raise CodecError(f"memory table of {n} regions needs {8 + 32 * n} bytes")
        return cls([MemRegion.unpack(payload[8 + 32 * i:8 + 32 * (i + 1)]) for i in range(n)])

    def pack(self) -> bytes:
        return struct.pack("<II", len(self.regions), 0) + b"".join(r.pack() for r in self.regions)


@dataclasses.dataclass
class SingleMemRegion:
    """ADD_MEM_REG / REM_MEM_REG: 8 bytes of padding, then one region."""

    region: MemRegion

    @classmethod
    def unpack(cls, payload: bytes) -> SingleMemRegion:
        if len(payload) < 40:
            raise CodecError(f"single memory region needs 40 bytes, got {len(payload)}")
        return cls(MemRegion.unpack(payload[8:40]))

    def pack(self) -> bytes:
        return bytes(8) + self.region.pack()


@dataclasses.dataclass
class VringFd:
    """SET_VRING_KICK/CALL/ERR: a u64 with the queue index and a 'no fd' bit."""

    index: int
    nofd: bool

    @classmethod
    def unpack(cls, payload: bytes) -> VringFd:
        value = U64.unpack(payload).value
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise CodecError(f"unknown bits in vring fd payload {value:#x}")
        return cls(value & VRING_IDX_MASK, bool(value & VRING_NOFD_MASK))

    def pack(self) -> bytes:
        return U64(self.index | (VRING_NOFD_MASK if self.nofd else 0)).pack()


@dataclasses.dataclass
class Config:
    """GET/SET_CONFIG: offset, size, flags, then ``size`` bytes of config space."""

    offset: int
    size: int
    flags: int
    data: bytes

    HEAD: ClassVar[struct.Struct] = struct.Struct("<III")
    MAX_SIZE: ClassVar[int] = 256

    @classmethod
    def unpack(cls, payload: bytes) -> Config:
        if len(payload) < cls.HEAD.size:
            raise CodecError("config message shorter than its header")
        offset, size, flags = cls.HEAD.unpack_from(payload)
        if size > cls.MAX_SIZE or len(payload) < cls.HEAD.size + size:
            raise CodecError(f"config size {size} does not match payload of {len(payload)}")
        return cls(offset, size, flags, payload[cls.HEAD.size:cls.HEAD.size + size])

    def pack(self) -> bytes:
        return self.HEAD.pack(self.offset, self.size, self.flags) + self.data


@dataclasses.dataclass
class LogBase(Body):
    FORMAT = struct.Struct("<QQ")
    mmap_size: int
    mmap_offset: int


@dataclasses.dataclass
class Inflight(Body):
    FORMAT = struct.Struct("<QQHH")
    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int


@dataclasses.dataclass
class DeviceStateTransfer(Body):
    FORMAT = struct.Struct("<II")
    direction: int
    phase: int


@dataclasses.dataclass
class ShmemMap(Body):
    """VhostUserMMap, the body of BACKEND_SHMEM_MAP / BACKEND_SHMEM_UNMAP."""

    FORMAT = struct.Struct("<B7xQQQQ")
    shmid: int
    fd_offset: int
    shm_offset: int
    len: int
    flags: int


@dataclasses.dataclass
class ShmemConfig:
    """VhostUserShMemConfig: the sizes of up to 256 shared-memory regions, by shmid."""

    memory_sizes: list[int]

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<II256Q")

    @classmethod
    def unpack(cls, payload: bytes) -> ShmemConfig:
        if len(payload) < cls.FORMAT.size:
            raise CodecError(f"shmem config needs {cls.FORMAT.size} bytes")
        sizes = list(cls.FORMAT.unpack_from(payload)[2:])
        while sizes and not sizes[-1]:
            sizes.pop()  # trailing unused ids
        return cls(sizes)

    def pack(self) -> bytes:
        sizes = list(self.memory_sizes) + [0] * (256 - len(self.memory_sizes))
        if len(sizes) != 256:
            raise CodecError("at most 256 shared-memory regions")
        return self.FORMAT.pack(sum(1 for s in sizes if s), 0, *sizes)


# The body each front-end request carries (requests without one carry nothing).
REQUEST_BODIES: dict[int, type] = {
    FrontendReq.SET_FEATURES: U64,
    FrontendReq.SET_PROTOCOL_FEATURES: U64,
    FrontendReq.SET_MEM_TABLE: MemTable,
    FrontendReq.SET_LOG_BASE: LogBase,
    FrontendReq.SET_VRING_NUM: VringState,
    FrontendReq.SET_VRING_ADDR: VringAddr,
    FrontendReq.SET_VRING_BASE: VringState,
    FrontendReq.GET_VRING_BASE: VringState,
    FrontendReq.SET_VRING_KICK: VringFd,
    FrontendReq.SET_VRING_CALL: VringFd,
    FrontendReq.SET_VRING_ERR: VringFd,
    FrontendReq.SET_VRING_ENABLE: VringState,
    FrontendReq.GET_CONFIG: Config,
    FrontendReq.SET_CONFIG: Config,
    FrontendReq.GET_INFLIGHT_FD: Inflight,
    FrontendReq.SET_INFLIGHT_FD: Inflight,
    FrontendReq.VRING_KICK: VringState,
    FrontendReq.ADD_MEM_REG: SingleMemRegion,
    FrontendReq.REM_MEM_REG: SingleMemRegion,
    FrontendReq.SET_STATUS: U64,
    FrontendReq.SET_DEVICE_STATE_FD: DeviceStateTransfer,
}

BACKEND_BODIES: dict[int, type] = {
    BackendReq.SHMEM_MAP: ShmemMap,
    BackendReq.SHMEM_UNMAP: ShmemMap,
}


def decode_body(msg: Message, bodies: dict[int, type] = REQUEST_BODIES):
    """The typed body of ``msg``, or None for a message without one."""
    body = bodies.get(msg.request)
    return body.unpack(msg.payload) if body else None
