"""Request extensions: what a create-type request carries after its arguments.

Since protocol 7.38 a request may end with ``fuse_in_header.total_extlen`` 8-byte units of
extensions, each a ``fuse_ext_header {size, type}`` and its payload, ``size`` covering
both.  Two kinds exist (uapi ``enum fuse_ext_type``):

* a **security context** (FUSE_SECURITY_CTX): ``type`` is the number of contexts (0..31),
  the header doubles as ``fuse_secctx_header {size, nr_secctx}``; then per context a
  ``fuse_secctx {size, padding}``, the xattr name (NUL-terminated) and ``size`` value
  bytes, each record padded to 8 bytes.  A guest without an LSM that labels files sends
  the header alone (0 contexts).  Kernels 5.17-6.1 (7.36/7.37) sent the same bytes as a
  trailing argument instead, with ``total_extlen`` 0;
* **supplementary groups** (FUSE_EXT_GROUPS, with FUSE_CREATE_SUPP_GROUP):
  ``fuse_supp_groups {nr_groups}`` and that many u32 gids.

Parsing is strict -- a length that does not add up is EINVAL, never a partial read -- and
refuses security-context names a guest must not be able to set on the host through the
daemon's privileges: anything outside ``security.``, and ``security.capability`` (file
capabilities on a host file).
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from pyvirtiofsd.fuse import abi

MAX_GROUPS = 64
"""More supplementary groups than any guest sends (Linux sends one): refused beyond."""

_FORBIDDEN_SECCTX = frozenset({b"security.capability"})


def _einval(why: str) -> OSError:
    return OSError(errno.EINVAL, os.strerror(errno.EINVAL), why)


@dataclass(frozen=True)
class Extensions:
    secctx: tuple[tuple[bytes, bytes], ...] | None = None
    """``(xattr name, value)`` pairs; None when the request carried no context header."""
    groups: tuple[int, ...] = ()


def parse_secctx(data: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """A whole security-context block (header included), exactly ``len(data)`` bytes."""
    if len(data) < abi.fuse_secctx_header.size:
        raise _einval("security context shorter than its header")
    size, nr = abi.fuse_secctx_header.unpack_from(data, 0)
    if size != len(data):
        raise _einval("security context size does not match")
    if nr > abi.FUSE_MAX_NR_SECCTX:
        raise _einval("too many security contexts")
    pos, out = abi.fuse_secctx_header.size, []
    for _ in range(nr):
        if pos + abi.fuse_secctx.size > size:
            raise _einval("security context record past the end")
        start = pos
        vlen, _pad = abi.fuse_secctx.unpack_from(data, pos)
        pos += abi.fuse_secctx.size
        end = data.find(b"\0", pos, size)
        if end < 0:
            raise _einval("security context name without NUL")
        name = bytes(data[pos:end])
        pos = end + 1
        if pos + vlen > size:
            raise _einval("security context value past the end")
        value = bytes(data[pos:pos + vlen])
        pos = start + abi.fuse_rec_align(pos + vlen - start)
        if not name.startswith(b"security.") or name in _FORBIDDEN_SECCTX or len(name) > 255:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM),
                          f"security context name {name!r} not allowed")
        out.append((name, value))
    if pos > size:
        raise _einval("security context padding past the end")
    return tuple(out)


def parse_groups(data: bytes) -> tuple[int, ...]:
    """``fuse_supp_groups`` and its gids (``data`` without the extension header)."""
    if len(data) < abi.fuse_supp_groups.size:
        raise _einval("supplementary groups shorter than their header")
    (nr,) = abi.fuse_supp_groups.unpack_from(data, 0)
    if nr > MAX_GROUPS or abi.fuse_supp_groups.size + 4 * nr > len(data):
        raise _einval("supplementary group count does not fit")
    start = abi.fuse_supp_groups.size
    return tuple(int.from_bytes(data[start + 4 * k:start + 4 * k + 4], "little")
                 for k in range(nr))


def parse(data: bytes) -> Extensions:
    """The ``total_extlen * 8`` extension bytes at the end of a request."""
    pos, secctx, groups = 0, None, ()
    while pos < len(data):
        if len(data) - pos < abi.fuse_ext_header.size:
            raise _einval("extension shorter than its header")
        size, kind = abi.fuse_ext_header.unpack_from(data, pos)
        if size < abi.fuse_ext_header.size or size % 8 or pos + size > len(data):
            raise _einval(f"extension size {size} does not fit")
        body = data[pos:pos + size]
        if kind <= abi.FUSE_MAX_NR_SECCTX:
            if secctx is not None:
                raise _einval("two security-context extensions")
            secctx = parse_secctx(body)
        elif kind == abi.FUSE_EXT_GROUPS:
            if groups:
                raise _einval("two supplementary-group extensions")
            groups = parse_groups(body[abi.fuse_ext_header.size:])
        else:
            raise _einval(f"unknown request extension type {kind}")
        pos += size
    return Extensions(secctx, groups)


__all__ = ["Extensions", "MAX_GROUPS", "parse", "parse_groups", "parse_secctx"]
