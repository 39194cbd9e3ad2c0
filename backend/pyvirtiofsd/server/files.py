"""Handlers for files: OPEN, CREATE, TMPFILE, READ, WRITE, FLUSH, FSYNC, RELEASE,
FALLOCATE, LSEEK, COPY_FILE_RANGE."""
from __future__ import annotations

import errno
import os

from pyvirtiofsd.filesystem import Context, FileRange, Opened, SetAttr, WriteData
from pyvirtiofsd.fuse import abi

from .packing import ReplyPacking
from .wire import IN_HDR, OUT_HDR, U32, Written, err, reply_room, s64


class FileHandlers(ReplyPacking):
    """Mixed into :class:`~pyvirtiofsd.server.Server`."""

    def _open(self, req, hdr, arglen, session) -> bytes:
        oi = self._args(req, arglen).struct(abi.fuse_open_in)
        if self.options.readonly and opens_for_writing(oi.flags):
            raise err(errno.EROFS)
        ctx = self._ctx(hdr)
        opened = self.fs.open(ctx, hdr.nodeid, oi.flags)
        self._open_kill_suidgid(ctx, hdr.nodeid, oi.open_flags, opened)
        return self._open_out(opened, False)

    def _open_kill_suidgid(self, ctx: Context, nodeid: int, open_flags: int,
                           opened: Opened) -> None:
        """killpriv_v2: an O_TRUNC open by a guest user without CAP_FSETID must clear
        set-user/group-ID, which the guest leaves to us (FUSE_OPEN_KILL_SUIDGID)."""
        if open_flags & abi.FUSE_OPEN_KILL_SUIDGID and (
                self._session is not None
                and self._session.flags & abi.FUSE_HANDLE_KILLPRIV_V2):
            try:
                self.fs.setattr(ctx, nodeid, SetAttr(kill_suidgid=True), opened.fh)
            except BaseException:
                # the open fails as a whole: the guest will never release this handle
                self.fs.release(ctx, nodeid, opened.fh, 0, False, 0)
                raise

    def _create(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        # before 7.12 CREATE sent fuse_open_in (flags, mode): no umask
        ci = a.struct(abi.fuse_create_in,
                      size=abi.fuse_open_in.size if session.minor < 12 else abi.fuse_create_in.size)
        name = a.name()
        ctx = self._create_ctx(req, hdr, arglen, session, ci.umask, a.rest())
        entry, opened = self.fs.create(ctx, hdr.nodeid, name, ci.mode, ci.flags)
        try:
            self._open_kill_suidgid(ctx, entry.nodeid, ci.open_flags, opened)
        except BaseException:
            # The guest never learns of this entry: give back the lookup CREATE counted.
            self.fs.forget(ctx, entry.nodeid, 1)
            raise
        return self._entry_out(entry, session) + self._open_out(opened, False)

    def _tmpfile(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        ci = a.struct(abi.fuse_create_in, size=abi.fuse_create_in.size)
        if a.pos < len(a.data):
            a.cstring()     # Linux sends the anonymous dentry's name ("/"): meaningless here
        ctx = self._create_ctx(req, hdr, arglen, session, ci.umask, a.rest())
        entry, opened = self.fs.tmpfile(ctx, hdr.nodeid, ci.mode, ci.flags)
        return self._entry_out(entry, session) + self._open_out(opened, False)

    def _read(self, req, hdr, arglen, session):
        ri = self._args(req, arglen).struct(abi.fuse_read_in, min_size=abi.FUSE_COMPAT_WRITE_IN_SIZE)
        size = reply_room(ri.size, session.max_read, req, "READ")
        result = self.fs.read(self._ctx(hdr), hdr.nodeid, ri.fh, ri.offset, size, ri.flags)
        if isinstance(result, FileRange):
            try:
                n = req.out_from_fd(result.fd, OUT_HDR, min(size, result.size), result.offset)
            finally:
                if result.done is not None:
                    result.done()
            return Written(n)
        return bytes(result[:size])

    def _write(self, req, hdr, arglen, session) -> bytes:
        in_size = abi.fuse_write_in.size if session.minor >= 9 else abi.FUSE_COMPAT_WRITE_IN_SIZE
        a = self._args(req, min(arglen, in_size))
        wi = a.struct(abi.fuse_write_in, size=in_size)
        if wi.size > arglen - in_size:
            raise err(errno.EINVAL)
        data = WriteData(req, IN_HDR + in_size, wi.size)
        n = self.fs.write(self._ctx(hdr), hdr.nodeid, wi.fh, wi.offset, data, wi.flags,
                          bool(wi.write_flags & abi.FUSE_WRITE_KILL_SUIDGID))
        return abi.fuse_write_out.pack(n, 0)

    def _release(self, req, hdr, arglen, session) -> bytes:
        ri = self._args(req, arglen).struct(abi.fuse_release_in, min_size=16)
        self.fs.release(self._ctx(hdr), hdr.nodeid, ri.fh, ri.flags,
                        bool(ri.release_flags & abi.FUSE_RELEASE_FLUSH), ri.lock_owner)
        if self.dax is not None:
            self.dax.released(hdr.nodeid, ri.fh)
        return b""

    def _fsync(self, req, hdr, arglen, session) -> bytes:
        fi = self._args(req, arglen).struct(abi.fuse_fsync_in)
        self.fs.fsync(self._ctx(hdr), hdr.nodeid, fi.fh,
                      bool(fi.fsync_flags & abi.FUSE_FSYNC_FDATASYNC))
        return b""

    def _flush(self, req, hdr, arglen, session) -> bytes:
        fi = self._args(req, arglen).struct(abi.fuse_flush_in)
        self.fs.flush(self._ctx(hdr), hdr.nodeid, fi.fh, fi.lock_owner)
        return b""

    def _fallocate(self, req, hdr, arglen, session) -> bytes:
        fi = self._args(req, arglen).struct(abi.fuse_fallocate_in)
        self.fs.fallocate(self._ctx(hdr), hdr.nodeid, fi.fh, fi.mode, fi.offset, fi.length)
        return b""

    def _lseek(self, req, hdr, arglen, session) -> bytes:
        li = self._args(req, arglen).struct(abi.fuse_lseek_in)
        off = self.fs.lseek(self._ctx(hdr), hdr.nodeid, li.fh, s64(li.offset), li.whence)
        return abi.fuse_lseek_out.pack(off)

    def _copy_file_range(self, req, hdr, arglen, session) -> bytes:
        ci = self._args(req, arglen).struct(abi.fuse_copy_file_range_in)
        n = self.fs.copy_file_range(self._ctx(hdr), hdr.nodeid, ci.fh_in, ci.off_in,
                                    ci.nodeid_out, ci.fh_out, ci.off_out, ci.len, ci.flags)
        return abi.fuse_write_out.pack(min(n, U32), 0)


def opens_for_writing(flags: int) -> bool:
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
