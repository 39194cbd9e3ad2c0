"""The seam between a transport (a virtqueue, a test) and the FUSE server.

A transport hands the server one :class:`FuseRequest` per FUSE request.  The request owns
two byte areas: the *in* area the driver wrote (``fuse_in_header`` + arguments + data) and
the *out* area the server writes its reply into (``fuse_out_header`` + reply).  Bulk data
moves between those areas and file descriptors without passing through Python objects,
which is what lets a virtqueue transport do ``preadv``/``pwritev`` straight into guest
memory.

The server calls :meth:`FuseRequest.complete` exactly once per request, also for requests
that get no FUSE reply (FORGET), with the number of bytes it wrote to the out area.
"""
from __future__ import annotations

import os
from typing import Protocol


class FuseRequest(Protocol):
    in_len: int
    """Total bytes in the in area (the whole device-readable part of the request)."""
    out_len: int
    """Total bytes available in the out area (the device-writable part)."""

    def read_in(self, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes of the in area from ``offset`` (fewer if the area ends)."""

    def write_out(self, offset: int, data: bytes) -> None:
        """Write ``data`` into the out area at ``offset``; ValueError if it does not fit."""

    def out_from_fd(self, fd: int, out_offset: int, size: int, file_offset: int) -> int:
        """``preadv`` up to ``size`` bytes of ``fd`` at ``file_offset`` into the out area at
        ``out_offset``; returns the byte count (short at end of file); OSError on failure."""

    def in_to_fd(self, fd: int, in_offset: int, size: int, file_offset: int) -> int:
        """``pwritev`` ``size`` bytes of the in area from ``in_offset`` to ``fd`` at
        ``file_offset``; returns the byte count; OSError on failure."""

    def complete(self, used_len: int) -> None:
        """Return the request to the driver; ``used_len`` bytes of the out area were written."""


class BytesRequest:
    """A :class:`FuseRequest` over plain Python buffers: for unit tests and in-process use."""

    def __init__(self, data: bytes, out_len: int = 1 << 20):
        self._in = bytes(data)
        self._out = bytearray(out_len)
        self.in_len = len(self._in)
        self.out_len = out_len
        self.used_len: int | None = None

    def read_in(self, offset: int, size: int) -> bytes:
        return self._in[offset:offset + size]

    def write_out(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.out_len:
            raise ValueError("reply does not fit the out area")
        self._out[offset:offset + len(data)] = data

    def out_from_fd(self, fd: int, out_offset: int, size: int, file_offset: int) -> int:
        size = max(0, min(size, self.out_len - out_offset))
        data = os.pread(fd, size, file_offset)
        self._out[out_offset:out_offset + len(data)] = data
        return len(data)

    def in_to_fd(self, fd: int, in_offset: int, size: int, file_offset: int) -> int:
        return os.pwrite(fd, self._in[in_offset:in_offset + size], file_offset)

    def complete(self, used_len: int) -> None:
        if self.used_len is not None:
            raise RuntimeError("request completed twice")
        self.used_len = used_len

    @property
    def reply(self) -> bytes:
        """The bytes the server wrote (valid after :meth:`complete`)."""
        if self.used_len is None:
            raise RuntimeError("request not completed")
        return bytes(self._out[:self.used_len])
