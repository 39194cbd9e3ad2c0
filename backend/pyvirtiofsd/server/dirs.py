"""Handlers for directories: OPENDIR, READDIR, READDIRPLUS, FSYNCDIR, RELEASEDIR.

READDIRPLUS is built from the file system's ``readdir`` + ``lookup`` for every file
system, or packed by the file system itself where it can (the optional
:meth:`~pyvirtiofsd.filesystem.FileSystem.readdirplus_records`, chosen once when the
server is built).
"""
from __future__ import annotations

import errno

from pyvirtiofsd.filesystem import DIRPLUS_FULL, DIRPLUS_PYTHON, Attr, Context, Entry
from pyvirtiofsd.fuse import abi

from .packing import ReplyPacking
from .session import Session
from .wire import err, reply_room


class DirHandlers(ReplyPacking):
    """Mixed into :class:`~pyvirtiofsd.server.Server`."""

    def _opendir(self, req, hdr, arglen, session) -> bytes:
        oi = self._args(req, arglen).struct(abi.fuse_open_in)
        return self._open_out(self.fs.opendir(self._ctx(hdr), hdr.nodeid, oi.flags), True)

    def _releasedir(self, req, hdr, arglen, session) -> bytes:
        ri = self._args(req, arglen).struct(abi.fuse_release_in, min_size=16)
        self.fs.releasedir(self._ctx(hdr), hdr.nodeid, ri.fh, ri.flags)
        return b""

    def _fsyncdir(self, req, hdr, arglen, session) -> bytes:
        fi = self._args(req, arglen).struct(abi.fuse_fsync_in)
        self.fs.fsyncdir(self._ctx(hdr), hdr.nodeid, fi.fh,
                         bool(fi.fsync_flags & abi.FUSE_FSYNC_FDATASYNC))
        return b""

    def _readdir(self, req, hdr, arglen, session) -> bytes:
        return self._pack_dir(req, hdr, arglen, session, plus=False)

    def _readdirplus(self, req, hdr, arglen, session) -> bytes:
        return self._pack_dir(req, hdr, arglen, session, plus=True)

    def _pack_dir(self, req, hdr, arglen, session, plus: bool) -> bytes:
        """Take entries from ``fs.readdir`` until the guest's buffer is full.

        For READDIRPLUS each entry that fits is looked up through ``fs.lookup`` -- so every
        file system gets READDIRPLUS from ``readdir`` + ``lookup`` -- and only after it is
        known to fit, so an entry left out holds no lookup count the guest does not know
        about.  ``.`` and ``..`` get nodeid 0 (the guest skips them, it would never forget
        a lookup we made for them).
        """
        ri = self._args(req, arglen).struct(abi.fuse_read_in, min_size=abi.FUSE_COMPAT_WRITE_IN_SIZE)
        limit = reply_room(ri.size, session.max_read, req, "READDIRPLUS" if plus else "READDIR")
        ctx = self._ctx(hdr)
        out = bytearray()
        offset = ri.offset
        if plus and self._dirplus is not None:
            records, offset, why = self._dirplus(ctx, hdr.nodeid, ri.fh, offset, limit,
                                                 self.attrs.blksize, self.options.timeout)
            if why != DIRPLUS_PYTHON:
                if not records and why == DIRPLUS_FULL:
                    raise err(errno.EINVAL)       # not even one entry fits
                return records
            out += records
        try:
            return self._pack_entries(ctx, hdr, session, ri.fh, offset, limit, plus, out)
        except OSError:
            if out:
                return bytes(out)   # lookups were counted for these: they must reach the guest
            raise

    def _pack_entries(self, ctx: Context, hdr, session: Session, fh: int, offset: int,
                      limit: int, plus: bool, out: bytearray) -> bytes:
        entries = self.fs.readdir(ctx, hdr.nodeid, fh, offset)
        it = iter(entries)
        try:
            for d in it:
                name = bytes(d.name)
                if plus:
                    if len(out) + abi.direntplus_size(len(name)) > limit:
                        break
                    if name in (b".", b".."):
                        dots = Entry(0, 0, Attr(ino=d.ino, mode=d.type << 12), 0.0, 0.0)
                        entry_out = self._entry_out(dots, session, full=True)
                    else:
                        try:
                            entry = self.fs.lookup(ctx, hdr.nodeid, name)
                        except OSError as e:
                            if e.errno == errno.ENOENT:
                                continue        # gone between readdir and lookup
                            if out:
                                break           # send what we have; the error comes next time
                            raise
                        entry_out = self._entry_out(entry, session, full=True)
                    out += abi.pack_direntplus(entry_out, d.ino, d.offset, d.type, name)
                else:
                    if len(out) + abi.dirent_size(len(name)) > limit:
                        break
                    out += abi.pack_dirent(d.ino, d.offset, d.type, name)
            else:
                return bytes(out)
            if not out:
                raise err(errno.EINVAL)   # not even one entry fits: no silent end-of-dir
            return bytes(out)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
