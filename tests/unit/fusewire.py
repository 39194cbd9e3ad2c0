"""A tiny FUSE client for unit tests: packs requests, runs them through a Server, parses replies.

Tests speak the wire format, not the Python API, so they exercise the server's decoding and
reply building exactly as a guest would.
"""
from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.fuse.request import BytesRequest
from pyvirtiofsd.server import Server

_unique = itertools.count(1)

# What a 6.1 guest offered (PROTOCOLS.md §1.7/§5.4), plus MAP_ALIGNMENT as with a DAX window.
GUEST_FLAGS = 0x7BFFFFFB | abi.FUSE_MAP_ALIGNMENT
GUEST_FLAGS2 = 0xB


def header(opcode: int, nodeid: int, body_len: int, *, uid: int = 0, gid: int = 0,
           pid: int = 1, unique: int | None = None, total_extlen: int = 0,
           length: int | None = None) -> bytes:
    unique = next(_unique) if unique is None else unique
    length = abi.fuse_in_header.size + body_len if length is None else length
    return abi.fuse_in_header.pack(length, opcode, unique, nodeid, uid, gid, pid,
                                   total_extlen, 0)


def request(opcode: int, nodeid: int = 0, *parts: bytes, **kw: Any) -> bytes:
    body = b"".join(parts)
    return header(opcode, nodeid, len(body), **kw) + body


def cstr(s: bytes | str) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


@dataclass
class Reply:
    raw: bytes
    used_len: int
    unique: int = 0
    error: int = 0
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.used_len >= 16 and self.error == 0


def run(server: Server, data: bytes, out_len: int = 1 << 20, **handle_kw: Any) -> Reply:
    req = BytesRequest(data, out_len)
    server.handle(req, **handle_kw)
    assert req.used_len is not None, "request not completed"
    raw = req.reply
    if req.used_len == 0:
        return Reply(raw, 0)
    oh = abi.fuse_out_header.parse(raw)
    assert oh.len == req.used_len, "out header len must equal the bytes written"
    return Reply(raw, req.used_len, oh.unique, oh.error, raw[16:])


def parse_attr(b: bytes) -> Any:
    return abi.fuse_attr.parse(b)


@dataclass
class EntryOut:
    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    attr: Any


def parse_entry(body: bytes) -> EntryOut:
    h = abi.fuse_entry_out_head.parse(body)
    return EntryOut(h.nodeid, h.generation, h.entry_valid, h.attr_valid,
                    abi.fuse_attr.parse(body, abi.fuse_entry_out_head.size))


def parse_dirents(body: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos < len(body):
        d = abi.fuse_dirent.parse(body, pos)
        name = body[pos + 24:pos + 24 + d.namelen]
        out.append((d.ino, d.off, d.type, name))
        pos += abi.dirent_size(d.namelen)
    return out


def parse_direntplus(body: bytes) -> list[tuple[EntryOut, tuple[int, int, int, bytes]]]:
    out, pos = [], 0
    while pos < len(body):
        e = parse_entry(body[pos:pos + abi.FUSE_ENTRY_OUT_SIZE])
        d = abi.fuse_dirent.parse(body, pos + abi.FUSE_ENTRY_OUT_SIZE)
        start = pos + abi.FUSE_ENTRY_OUT_SIZE + 24
        out.append((e, (d.ino, d.off, d.type, body[start:start + d.namelen])))
        pos += abi.direntplus_size(d.namelen)
    return out


class FuseError(Exception):
    def __init__(self, errno_: int):
        super().__init__(errno_)
        self.errno = errno_


class Client:
    """Typed helpers over :func:`run`; each raises :class:`FuseError` on an error reply."""

    def __init__(self, server: Server, uid: int = 0, gid: int = 0):
        self.server = server
        self.uid, self.gid = uid, gid

    def call(self, opcode: int, nodeid: int = 0, *parts: bytes, out_len: int = 1 << 20,
             **kw: Any) -> Reply:
        kw.setdefault("uid", self.uid)
        kw.setdefault("gid", self.gid)
        return run(self.server, request(opcode, nodeid, *parts, **kw), out_len)

    def ok(self, opcode: int, nodeid: int = 0, *parts: bytes, **kw: Any) -> bytes:
        r = self.call(opcode, nodeid, *parts, **kw)
        if r.error:
            raise FuseError(-r.error)
        return r.body

    def init(self, minor: int = 39, flags: int = GUEST_FLAGS, flags2: int = GUEST_FLAGS2,
             major: int = 7, max_readahead: int = 128 * 1024) -> Reply:
        body = abi.fuse_init_in.build(major=major, minor=minor, max_readahead=max_readahead,
                                      flags=flags, flags2=flags2)
        return self.call(Opcode.FUSE_INIT, 0, body)

    # names
    def lookup(self, parent: int, name: bytes | str) -> EntryOut:
        return parse_entry(self.ok(Opcode.FUSE_LOOKUP, parent, cstr(name)))

    def forget(self, nodeid: int, n: int) -> Reply:
        return self.call(Opcode.FUSE_FORGET, nodeid, abi.fuse_forget_in.pack(n))

    def batch_forget(self, pairs: list[tuple[int, int]]) -> Reply:
        return self.call(Opcode.FUSE_BATCH_FORGET, 0,
                         abi.fuse_batch_forget_in.pack(len(pairs), 0),
                         *(abi.fuse_forget_one.pack(*p) for p in pairs))

    def getattr(self, nodeid: int, fh: int | None = None) -> Any:
        body = abi.fuse_getattr_in.pack(abi.FUSE_GETATTR_FH if fh is not None else 0, 0,
                                        fh or 0)
        return abi.fuse_attr.parse(self.ok(Opcode.FUSE_GETATTR, nodeid, body), 16)

    def setattr(self, nodeid: int, **fields: int) -> Any:
        body = abi.fuse_setattr_in.build(**fields)
        return abi.fuse_attr.parse(self.ok(Opcode.FUSE_SETATTR, nodeid, body), 16)

    def mkdir(self, parent: int, name: bytes | str, mode: int = 0o755, umask: int = 0) -> EntryOut:
        return parse_entry(self.ok(Opcode.FUSE_MKDIR, parent,
                                   abi.fuse_mkdir_in.pack(mode, umask), cstr(name)))

    def mknod(self, parent: int, name: bytes | str, mode: int, rdev: int = 0) -> EntryOut:
        return parse_entry(self.ok(Opcode.FUSE_MKNOD, parent,
                                   abi.fuse_mknod_in.pack(mode, rdev, 0, 0), cstr(name)))

    def symlink(self, parent: int, name: bytes | str, target: bytes | str) -> EntryOut:
        return parse_entry(self.ok(Opcode.FUSE_SYMLINK, parent, cstr(name), cstr(target)))

    def link(self, nodeid: int, newparent: int, newname: bytes | str) -> EntryOut:
        return parse_entry(self.ok(Opcode.FUSE_LINK, newparent,
                                   abi.fuse_link_in.pack(nodeid), cstr(newname)))

    def readlink(self, nodeid: int) -> bytes:
        return self.ok(Opcode.FUSE_READLINK, nodeid)

    def unlink(self, parent: int, name: bytes | str) -> None:
        self.ok(Opcode.FUSE_UNLINK, parent, cstr(name))

    def rmdir(self, parent: int, name: bytes | str) -> None:
        self.ok(Opcode.FUSE_RMDIR, parent, cstr(name))

    def rename(self, olddir: int, old: bytes | str, newdir: int, new: bytes | str,
               flags: int | None = None) -> None:
        if flags is None:
            self.ok(Opcode.FUSE_RENAME, olddir, abi.fuse_rename_in.pack(newdir),
                    cstr(old), cstr(new))
        else:
            self.ok(Opcode.FUSE_RENAME2, olddir, abi.fuse_rename2_in.pack(newdir, flags, 0),
                    cstr(old), cstr(new))

    # files
    def open(self, nodeid: int, flags: int) -> tuple[int, int]:
        o = abi.fuse_open_out.parse(self.ok(Opcode.FUSE_OPEN, nodeid,
                                            abi.fuse_open_in.pack(flags, 0)))
        return o.fh, o.open_flags

    def create(self, parent: int, name: bytes | str, mode: int = 0o644,
               flags: int = 0o2 | 0o100, umask: int = 0) -> tuple[EntryOut, int, int]:
        body = self.ok(Opcode.FUSE_CREATE, parent,
                       abi.fuse_create_in.pack(flags, mode, umask, 0), cstr(name))
        o = abi.fuse_open_out.parse(body, abi.FUSE_ENTRY_OUT_SIZE)
        return parse_entry(body), o.fh, o.open_flags

    def tmpfile(self, parent: int, mode: int = 0o600,
                flags: int = 0o2) -> tuple[EntryOut, int, int]:
        body = self.ok(Opcode.FUSE_TMPFILE, parent, abi.fuse_create_in.pack(flags, mode, 0, 0))
        o = abi.fuse_open_out.parse(body, abi.FUSE_ENTRY_OUT_SIZE)
        return parse_entry(body), o.fh, o.open_flags

    def read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        return self.ok(Opcode.FUSE_READ, nodeid,
                       abi.fuse_read_in.build(fh=fh, offset=offset, size=size))

    def write(self, nodeid: int, fh: int, offset: int, data: bytes, write_flags: int = 0) -> int:
        body = self.ok(Opcode.FUSE_WRITE, nodeid,
                       abi.fuse_write_in.build(fh=fh, offset=offset, size=len(data),
                                               write_flags=write_flags), data)
        return abi.fuse_write_out.parse(body).size

    def release(self, nodeid: int, fh: int, dir: bool = False) -> None:
        op = Opcode.FUSE_RELEASEDIR if dir else Opcode.FUSE_RELEASE
        self.ok(op, nodeid, abi.fuse_release_in.build(fh=fh))

    def opendir(self, nodeid: int) -> int:
        return abi.fuse_open_out.parse(self.ok(Opcode.FUSE_OPENDIR, nodeid,
                                               abi.fuse_open_in.pack(0, 0))).fh

    def readdir(self, nodeid: int, fh: int, offset: int = 0, size: int = 4096,
                plus: bool = False) -> bytes:
        op = Opcode.FUSE_READDIRPLUS if plus else Opcode.FUSE_READDIR
        return self.ok(op, nodeid, abi.fuse_read_in.build(fh=fh, offset=offset, size=size))

    def statx(self, nodeid: int, mask: int = 0xFFF) -> Any:
        body = self.ok(Opcode.FUSE_STATX, nodeid,
                       abi.fuse_statx_in.build(sx_mask=mask))
        return abi.fuse_statx.parse(body, abi.fuse_statx_out_head.size)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


# --- request extensions (7.38+) and the longer setxattr (SETXATTR_EXT) ----------------------

def secctx_block(*contexts: tuple[bytes, bytes]) -> bytes:
    """A security-context block as the guest builds it: fuse_secctx_header, then per
    context fuse_secctx + NUL-terminated name + value, each record padded to 8 bytes."""
    records = b""
    for name, value in contexts:
        rec = abi.fuse_secctx.pack(len(value), 0) + name + b"\0" + value
        records += rec.ljust(abi.fuse_rec_align(len(rec)), b"\0")
    size = abi.fuse_secctx_header.size + len(records)
    return abi.fuse_secctx_header.pack(size, len(contexts)) + records


def groups_ext(*gids: int) -> bytes:
    """A FUSE_EXT_GROUPS extension (header included), padded to 8 bytes."""
    body = abi.fuse_supp_groups.pack(len(gids)) + b"".join(u32(g) for g in gids)
    size = abi.fuse_rec_align(abi.fuse_ext_header.size + len(body))
    return (abi.fuse_ext_header.pack(size, abi.FUSE_EXT_GROUPS) + body).ljust(size, b"\0")


def with_extensions(opcode: int, nodeid: int, args: bytes, *exts: bytes, uid: int = 0,
                    gid: int = 0) -> bytes:
    """A request whose arguments are followed by extensions counted in total_extlen."""
    ext = b"".join(exts)
    assert len(ext) % 8 == 0
    return header(opcode, nodeid, len(args) + len(ext), uid=uid, gid=gid,
                  total_extlen=len(ext) // 8) + args + ext


def setxattr_ext(name: bytes, value: bytes, flags: int = 0, setxattr_flags: int = 0) -> bytes:
    """SETXATTR arguments in the 16-byte fuse_setxattr_in form (FUSE_SETXATTR_EXT)."""
    return abi.fuse_setxattr_in.pack(len(value), flags, setxattr_flags, 0) + cstr(name) + value


def init_out(reply: Reply) -> Any:
    """The parsed fuse_init_out of a successful INIT reply."""
    assert reply.ok, f"INIT failed: {reply.error}"
    return abi.fuse_init_out.parse(reply.body)
