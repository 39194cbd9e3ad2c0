"""What every handler reads and returns: the request's argument cursor, the limits that
bound a request, the reply markers, and small wire conversions.

Nothing here does I/O or knows an opcode's meaning; the handler groups
(:mod:`.names`, :mod:`.files`, :mod:`.dirs`, :mod:`.xattrs`, :mod:`.dax`) build on it.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.request import FuseRequest
from pyvirtiofsd.guestfaults import faults

IN_HDR = abi.fuse_in_header.size       # 40
OUT_HDR = abi.fuse_out_header.size     # 16

# Linux's limits (include/uapi/linux/limits.h): what any argument of a FUSE request can be.
PATH_MAX = 4096
XATTR_SIZE_MAX = 65536
XATTR_LIST_MAX = 65536

ARGS_MAX = 4096 + 2 * PATH_MAX + XATTR_SIZE_MAX
"""The most argument bytes (after ``fuse_in_header``) any request but WRITE may carry.

The largest are SETXATTR (a name and a value of at most XATTR_SIZE_MAX), SYMLINK (a name and
a target of at most PATH_MAX), RENAME2 (two names), plus the fixed structs and the
extensions of create-type requests (a security context, supplementary groups), for which
4 KiB is ample.  A WRITE may carry ``fuse_write_in`` + ``max_write``.  A request claiming
more is refused before any of it is read: a chain's length is no bound, since its
descriptors may all point at the same guest pages."""

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF


class _NoReply:
    """Marker: the opcode gets no FUSE reply (FORGET, BATCH_FORGET, INTERRUPT)."""


NO_REPLY = _NoReply()


@dataclass(frozen=True)
class Written:
    """Marker: the handler already wrote ``size`` reply bytes after the out header."""

    size: int


def err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Args:
    """A cursor over a request's argument bytes that refuses to read past them."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def struct(self, ws: abi.WireStruct, size: int | None = None,
               min_size: int | None = None) -> Any:
        """Parse ``ws``, reading any missing tail as zeros.

        ``size``: exactly this many bytes hold the struct (older minors sent shorter
        versions of some structs, and a name may follow).  Otherwise the struct is the
        last thing in the request and may be as short as ``min_size``.
        """
        avail = len(self.data) - self.pos
        if size is None:
            need, take = (ws.size if min_size is None else min_size), min(avail, ws.size)
        else:
            need = take = size
        if avail < need:
            raise err(errno.EINVAL)
        raw = self.data[self.pos:self.pos + take]
        self.pos += take
        if take < ws.size:
            raw += bytes(ws.size - take)
        return ws.parse(raw)

    def cstring(self) -> bytes:
        """A NUL-terminated string."""
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise err(errno.EINVAL)
        s = self.data[self.pos:end]
        self.pos = end + 1
        return s

    def name(self, allow_dots: bool = False) -> bytes:
        """A directory-entry name: one component, never empty, never containing '/'."""
        name = self.cstring()
        if not name or b"/" in name:
            raise err(errno.EINVAL)
        if len(name) > abi.FUSE_NAME_MAX:
            raise err(errno.ENAMETOOLONG)
        if not allow_dots and name in (b".", b".."):
            raise err(errno.EINVAL)
        return name

    def rest(self) -> bytes:
        """Whatever is left (consumed)."""
        s = self.data[self.pos:]
        self.pos = len(self.data)
        return s

    def take(self, n: int) -> bytes:
        if len(self.data) - self.pos < n:
            raise err(errno.EINVAL)
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s

    def end(self) -> None:
        """Nothing may follow (a name with an embedded NUL shows up as trailing bytes)."""
        if self.pos != len(self.data):
            raise err(errno.EINVAL)


def reply_room(size: int, most: int, req: FuseRequest, what: str) -> int:
    """The reply size a READ-like request asked for, cut to what a reply may carry (``most``,
    e.g. ``max_pages`` pages) and to the writable bytes the request offers.  A size the
    guest claims sizes nothing before this."""
    room = req.out_len - OUT_HDR
    if room < 0:
        raise err(errno.EINVAL)
    if size > most:
        faults.report("fuse request asks for more than a reply may carry", op=what,
                      size=size, most=most)
    return min(size, most, room)


def s64(v: int) -> int:
    """A u64 from the wire as the signed value it stands for (offsets, times)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def split_time(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)
