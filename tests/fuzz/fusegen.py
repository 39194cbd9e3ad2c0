"""Hypothesis strategies for hostile FUSE requests: every opcode with its real argument
layout, then truncated, padded with garbage, or replaced by garbage; header lengths that
lie; names with '/', '..', NUL, over NAME_MAX; nodeids and file handles that exist, once
existed, or never will."""
from __future__ import annotations

import re

from hypothesis import strategies as st

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode

NAME = object()       # a NUL-terminated name
DATA = object()       # bulk bytes (WRITE, SETXATTR value)
REPEAT = object()     # marker: the next struct repeats (BATCH_FORGET, REMOVEMAPPING)

LAYOUTS = {
    Opcode.FUSE_LOOKUP: [NAME], Opcode.FUSE_FORGET: [abi.fuse_forget_in],
    Opcode.FUSE_GETATTR: [abi.fuse_getattr_in], Opcode.FUSE_SETATTR: [abi.fuse_setattr_in],
    Opcode.FUSE_READLINK: [], Opcode.FUSE_SYMLINK: [NAME, NAME],
    Opcode.FUSE_MKNOD: [abi.fuse_mknod_in, NAME], Opcode.FUSE_MKDIR: [abi.fuse_mkdir_in, NAME],
    Opcode.FUSE_UNLINK: [NAME], Opcode.FUSE_RMDIR: [NAME],
    Opcode.FUSE_RENAME: [abi.fuse_rename_in, NAME, NAME], Opcode.FUSE_LINK: [abi.fuse_link_in, NAME],
    Opcode.FUSE_OPEN: [abi.fuse_open_in], Opcode.FUSE_READ: [abi.fuse_read_in],
    Opcode.FUSE_WRITE: [abi.fuse_write_in, DATA], Opcode.FUSE_STATFS: [],
    Opcode.FUSE_RELEASE: [abi.fuse_release_in], Opcode.FUSE_FSYNC: [abi.fuse_fsync_in],
    Opcode.FUSE_SETXATTR: [abi.fuse_getxattr_in, NAME, DATA],  # the 8-byte compat struct
    Opcode.FUSE_GETXATTR: [abi.fuse_getxattr_in, NAME], Opcode.FUSE_LISTXATTR: [abi.fuse_getxattr_in],
    Opcode.FUSE_REMOVEXATTR: [NAME], Opcode.FUSE_FLUSH: [abi.fuse_flush_in],
    Opcode.FUSE_INIT: [abi.fuse_init_in], Opcode.FUSE_OPENDIR: [abi.fuse_open_in],
    Opcode.FUSE_READDIR: [abi.fuse_read_in], Opcode.FUSE_RELEASEDIR: [abi.fuse_release_in],
    Opcode.FUSE_FSYNCDIR: [abi.fuse_fsync_in], Opcode.FUSE_ACCESS: [abi.fuse_access_in],
    Opcode.FUSE_CREATE: [abi.fuse_create_in, NAME], Opcode.FUSE_INTERRUPT: [abi.fuse_interrupt_in],
    Opcode.FUSE_DESTROY: [], Opcode.FUSE_BATCH_FORGET: [abi.fuse_batch_forget_in, REPEAT, abi.fuse_forget_one],
    Opcode.FUSE_FALLOCATE: [abi.fuse_fallocate_in], Opcode.FUSE_READDIRPLUS: [abi.fuse_read_in],
    Opcode.FUSE_RENAME2: [abi.fuse_rename2_in, NAME, NAME], Opcode.FUSE_LSEEK: [abi.fuse_lseek_in],
    Opcode.FUSE_COPY_FILE_RANGE: [abi.fuse_copy_file_range_in],
    Opcode.FUSE_SETUPMAPPING: [abi.fuse_setupmapping_in],
    Opcode.FUSE_REMOVEMAPPING: [abi.fuse_removemapping_in, REPEAT, abi.fuse_removemapping_one],
    Opcode.FUSE_SYNCFS: [abi.fuse_syncfs_in], Opcode.FUSE_TMPFILE: [abi.fuse_create_in],
    Opcode.FUSE_STATX: [abi.fuse_statx_in],
    # opcodes the server does not implement still get a clean ENOSYS
    Opcode.FUSE_GETLK: [], Opcode.FUSE_SETLK: [], Opcode.FUSE_SETLKW: [], Opcode.FUSE_BMAP: [],
    Opcode.FUSE_IOCTL: [], Opcode.FUSE_POLL: [], Opcode.FUSE_NOTIFY_REPLY: [],
    Opcode.FUSE_COPY_FILE_RANGE_64: [],
}

NAMES = st.one_of(
    st.sampled_from([b"f", b"d", b"s", b"p", b"g", b"new", b"new2", b".", b"..", b"", b"a/b",
                     b"/etc/passwd", b"../outside", b"canary", b"x" * 255, b"x" * 256,
                     b"x" * 5000, b"user.test", b"trusted.x", b"security.capability"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"")),
)
# Values for one field by its struct code: small ones hit real nodeids/fhs/flags.
FIELD = {
    "Q": st.one_of(st.integers(0, 8), st.sampled_from([2**63, 2**64 - 1, 1 << 32, 4096, 1 << 40]),
                   st.integers(0, 2**64 - 1)),
    "q": st.one_of(st.integers(-3, 8), st.integers(-(2**63), 2**63 - 1)),
    "I": st.one_of(st.integers(0, 8), st.sampled_from([0o100644, 0o40755, 0o20666, 0o10644,
                                                      0o777, 0o7777, 4096, 1 << 20, 2**31,
                                                      2**32 - 1, 0x8000, 0x241, 0x4000, 0x200000]),
                   st.integers(0, 2**32 - 1)),
    "i": st.integers(-(2**31), 2**31 - 1),
    "H": st.integers(0, 2**16 - 1),
    "B": st.integers(0, 255),
}


def _codes(ws) -> list[str]:
    out = []
    for count, code in re.findall(r"(\d*)([a-zA-Z])", ws.format.lstrip("<")):
        if code != "x":
            out += [code] * int(count or 1)
    return out


def struct_bytes(ws):
    return st.tuples(*(FIELD[c] for c in _codes(ws))).map(lambda v: ws.pack(*v))


@st.composite
def bodies(draw, opcode: int) -> bytes:
    layout = LAYOUTS.get(opcode, [])
    parts, i = [], 0
    while i < len(layout):
        part = layout[i]
        if part is NAME:
            parts.append(draw(NAMES) + b"\0")
        elif part is DATA:
            parts.append(draw(st.binary(max_size=300)))
        elif part is REPEAT:
            i += 1
            parts += draw(st.lists(struct_bytes(layout[i]), max_size=5))
        else:
            parts.append(draw(struct_bytes(part)))
        i += 1
    body = b"".join(parts)
    how = draw(st.sampled_from(["as is", "as is", "truncated", "extended", "garbage"]))
    if how == "truncated" and body:
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif how == "extended":
        body += draw(st.binary(min_size=1, max_size=64))
    elif how == "garbage":
        body = draw(st.binary(max_size=200))
    return body


OPCODES = st.one_of(st.sampled_from([int(o) for o in Opcode]), st.integers(0, 2**32 - 1))


@st.composite
def requests(draw, nodeids=st.one_of(st.integers(0, 8), st.sampled_from([2**64 - 1, 1 << 40]))):
    """(opcode, nodeid, body, header len override or None, total_extlen, uid, gid)."""
    opcode = draw(OPCODES)
    body = draw(bodies(opcode))
    hdr_len = draw(st.one_of(st.none(), st.none(), st.integers(0, 40 + len(body) + 64),
                             st.just(2**32 - 1)))
    extlen = draw(st.one_of(st.just(0), st.just(0), st.integers(0, 2**16 - 1)))
    uid = draw(st.sampled_from([0, 0, 1000, 2**32 - 1]))
    gid = draw(st.sampled_from([0, 0, 1000, 2**32 - 1]))
    return opcode, draw(nodeids), body, hdr_len, extlen, uid, gid
