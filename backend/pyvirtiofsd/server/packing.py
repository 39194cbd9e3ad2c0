"""Attributes and entries as wire bytes -- with the blksize clamp.

:class:`AttrPacker` is the only *Python* code that turns attributes into bytes, and
:class:`ReplyPacking` (mixed into :class:`~pyvirtiofsd.server.Server`) the only Python code
that builds ``fuse_entry_out``, ``fuse_attr_out`` and ``fuse_open_out`` around them, so no
reply built in Python can carry another blksize.  The C hot path packs the same structs
for the GETATTR, LOOKUP and READDIRPLUS it serves (``pvfs_pack_attr``/``pvfs_pack_entry`` in
cext/pack.c), and is switched on only where its bytes equal these (no DAX attribute
flag, no id translation; tests/unit/test_dirplus.py and tests/integration/test_hotpath.py
compare them).
"""
from __future__ import annotations

import os
from typing import Any, Callable

from pyvirtiofsd.filesystem import Attr, Entry, Opened, Statx
from pyvirtiofsd.fuse import abi

from .base import HandlerBase
from .options import CachePolicy
from .session import Session
from .wire import U32, U64, split_time


class AttrPacker:
    """The one place in Python attributes become wire bytes -- and get the blksize clamp.

    ``blksize`` is always ``guest_page_size``: not ``min()`` (a smaller value trips the
    guest's DAX ``i_blkbits != PAGE_SHIFT`` check just as well), not the host's value.
    """

    def __init__(self, guest_page_size: int, dax_policy: Callable[[Attr], bool] | None = None,
                 uid_map: Any = None, gid_map: Any = None):
        self.blksize = guest_page_size
        self.dax_policy = dax_policy  # per-inode FUSE_ATTR_DAX (see dax.DaxWindow.inode_dax)
        # host -> guest id translation (--translate-uid/gid); identity when None
        self.uid = uid_map.to_guest if uid_map else _same
        self.gid = gid_map.to_guest if gid_map else _same

    def fuse_attr(self, a: Attr) -> bytes:
        flags = a.flags
        if self.dax_policy is not None and self.dax_policy(a):
            flags |= abi.FUSE_ATTR_DAX
        return abi.fuse_attr.pack(
            a.ino & U64, a.size & U64, a.blocks & U64,
            a.atime & U64, a.mtime & U64, a.ctime & U64,
            a.atimensec, a.mtimensec, a.ctimensec,
            a.mode & U32, a.nlink & U32, self.uid(a.uid & U32), self.gid(a.gid & U32),
            encode_dev(a.rdev), self.blksize, flags & U32)

    def fuse_statx(self, s: Statx) -> bytes:
        return abi.fuse_statx.pack(
            s.mask & U32, self.blksize, s.attributes & U64, s.nlink & U32,
            self.uid(s.uid & U32), self.gid(s.gid & U32), s.mode & 0xFFFF, 0, s.ino & U64,
            s.size & U64,
            s.blocks & U64, s.attributes_mask & U64,
            s.atime[0], s.atime[1], 0, s.btime[0], s.btime[1], 0,
            s.ctime[0], s.ctime[1], 0, s.mtime[0], s.mtime[1], 0,
            s.rdev_major, s.rdev_minor, s.dev_major, s.dev_minor)


def _same(ident: int) -> int:
    return ident


def encode_dev(dev: int) -> int:
    """A host dev_t as the 32-bit "new" encoding the guest decodes (``new_decode_dev``)."""
    major, minor = os.major(dev), os.minor(dev)
    return ((minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12)) & U32


def decode_dev(dev: int) -> int:
    """The guest's 32-bit ``new_encode_dev`` value as a host dev_t."""
    return os.makedev((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))


class ReplyPacking(HandlerBase):
    """The reply structs that carry attributes or a handle, with the cache policy applied.
    Mixed into :class:`~pyvirtiofsd.server.Server` (uses ``options`` and ``attrs``)."""

    def _entry_out(self, entry: Entry, session: Session, full: bool = False) -> bytes:
        """``fuse_entry_out``; cut to the pre-7.9 size for old guests unless ``full``
        (READDIRPLUS, 7.21+, always carries whole ones)."""
        t = self.options.timeout
        ev, evn = split_time(t if entry.entry_timeout is None else entry.entry_timeout)
        av, avn = split_time(t if entry.attr_timeout is None else entry.attr_timeout)
        out = (abi.fuse_entry_out_head.pack(entry.nodeid, entry.generation, ev, av, evn, avn)
               + self.attrs.fuse_attr(entry.attr))
        return out if full or session.minor >= 9 else out[:abi.FUSE_COMPAT_ENTRY_OUT_SIZE]

    def _attr_out(self, result: Attr | tuple[Attr, float], session: Session) -> bytes:
        attr, timeout = result if isinstance(result, tuple) else (result, self.options.timeout)
        av, avn = split_time(timeout)
        out = abi.fuse_attr_out_head.pack(av, avn, 0) + self.attrs.fuse_attr(attr)
        return out if session.minor >= 9 else out[:abi.FUSE_COMPAT_ATTR_OUT_SIZE]

    def _statx_out(self, result: Statx | tuple[Statx, float]) -> bytes:
        stx, timeout = result if isinstance(result, tuple) else (result, self.options.timeout)
        av, avn = split_time(timeout)
        return abi.fuse_statx_out_head.pack(av, avn, 0, 0, 0) + self.attrs.fuse_statx(stx)

    def _open_out(self, opened: Opened, is_dir: bool) -> bytes:
        return abi.fuse_open_out.pack(opened.fh, opened.open_flags | self.cache_open_flags(is_dir), 0)

    def cache_open_flags(self, is_dir: bool) -> int:
        """The FOPEN_* flags the cache policy adds to every OPEN/CREATE (or OPENDIR) reply
        (the C hot path adds the same, see virtiofs.HotPath)."""
        cache = self.options.cache
        if cache in (CachePolicy.NEVER, CachePolicy.METADATA) and not is_dir:
            return abi.FOPEN_DIRECT_IO
        if cache == CachePolicy.ALWAYS:
            return abi.FOPEN_CACHE_DIR if is_dir else abi.FOPEN_KEEP_CACHE
        return 0
