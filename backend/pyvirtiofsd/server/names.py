"""Handlers for names, inodes and attributes: LOOKUP, FORGET, GETATTR, SETATTR, STATX,
READLINK, the requests that create and remove names (SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR,
RENAME, RENAME2, LINK), and those about the file system as a whole (ACCESS, STATFS,
SYNCFS)."""
from __future__ import annotations

import errno
from typing import Any

from pyvirtiofsd.filesystem import SetAttr, Statx
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.guestfaults import faults

from .packing import ReplyPacking, decode_dev
from .wire import NO_REPLY, Args, err, s64


class NameHandlers(ReplyPacking):
    """Mixed into :class:`~pyvirtiofsd.server.Server`."""

    # --- lookups and forgetting ---------------------------------------------------------

    def _lookup(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        name = a.name(allow_dots=True)
        a.end()
        return self._entry_out(self.fs.lookup(self._ctx(hdr), hdr.nodeid, name), session)

    def _forget(self, req, hdr, arglen, session):
        try:
            fi = self._args(req, arglen).struct(abi.fuse_forget_in)
            self.fs.forget(self._ctx(hdr), hdr.nodeid, fi.nlookup)
            self._dax_forgotten([hdr.nodeid])
        except Exception as e:  # noqa: BLE001 - no reply to carry an error
            faults.report("forget failed", nodeid=hdr.nodeid, error=repr(e))
        return NO_REPLY

    def _batch_forget(self, req, hdr, arglen, session):
        try:
            a = self._args(req, arglen)
            bi = a.struct(abi.fuse_batch_forget_in)
            have = (len(a.data) - a.pos) // abi.fuse_forget_one.size
            if have < bi.count:
                faults.report("batch_forget truncated", count=bi.count, present=have)
            pairs = [tuple(a.struct(abi.fuse_forget_one)) for _ in range(min(have, bi.count))]
            if pairs:
                self.fs.batch_forget(self._ctx(hdr), pairs)
                self._dax_forgotten([nodeid for nodeid, _ in pairs])
        except Exception as e:  # noqa: BLE001
            faults.report("batch_forget failed", error=repr(e))
        return NO_REPLY

    def _dax_forgotten(self, nodeids: list[int]) -> None:
        """A forgotten inode keeps no DAX mapping (the guest can no longer reach it).
        A file system that does not count lookups (``lookup_count`` answers ``None``)
        leaves every inode known."""
        if self.dax is None:
            return
        for nodeid in nodeids:
            count = self.fs.lookup_count(nodeid)
            self.dax.forgotten(nodeid, still_known=count is None or count > 0)

    # --- attributes ---------------------------------------------------------------------

    def _getattr(self, req, hdr, arglen, session) -> bytes:
        gi = self._args(req, arglen).struct(abi.fuse_getattr_in, min_size=0)   # absent before 7.9
        fh = gi.fh if gi.getattr_flags & abi.FUSE_GETATTR_FH else None
        return self._attr_out(self.fs.getattr(self._ctx(hdr), hdr.nodeid, fh), session)

    def _setattr(self, req, hdr, arglen, session) -> bytes:
        si = self._args(req, arglen).struct(abi.fuse_setattr_in)
        v = si.valid
        changes = SetAttr(
            mode=si.mode if v & abi.FATTR_MODE else None,
            uid=si.uid if v & abi.FATTR_UID else None,
            gid=si.gid if v & abi.FATTR_GID else None,
            size=si.size if v & abi.FATTR_SIZE else None,
            atime_now=bool(v & abi.FATTR_ATIME_NOW),
            mtime_now=bool(v & abi.FATTR_MTIME_NOW),
            atime=(s64(si.atime), si.atimensec)
            if v & abi.FATTR_ATIME and not v & abi.FATTR_ATIME_NOW else None,
            mtime=(s64(si.mtime), si.mtimensec)
            if v & abi.FATTR_MTIME and not v & abi.FATTR_MTIME_NOW else None,
            ctime=(s64(si.ctime), si.ctimensec) if v & abi.FATTR_CTIME else None,
            kill_suidgid=bool(v & abi.FATTR_KILL_SUIDGID),
        )
        fh = si.fh if v & abi.FATTR_FH else None
        o = self.options
        if o.uid_map and changes.uid is not None:
            changes.uid = o.uid_map.to_host(changes.uid)      # forbid-guest: EPERM
        if o.gid_map and changes.gid is not None:
            changes.gid = o.gid_map.to_host(changes.gid)
        return self._attr_out(self.fs.setattr(self._ctx(hdr), hdr.nodeid, changes, fh), session)

    def _statx(self, req, hdr, arglen, session) -> bytes:
        sx = self._args(req, arglen).struct(abi.fuse_statx_in)
        fh = sx.fh if sx.getattr_flags & abi.FUSE_GETATTR_FH else None
        ctx = self._ctx(hdr)
        try:
            result: Any = self.fs.statx(ctx, hdr.nodeid, fh, sx.sx_flags, sx.sx_mask)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            got = self.fs.getattr(ctx, hdr.nodeid, fh)
            attr, timeout = got if isinstance(got, tuple) else (got, self.options.timeout)
            result = (Statx.from_attr(attr), timeout)
        return self._statx_out(result)

    def _readlink(self, req, hdr, arglen, session) -> bytes:
        return self.fs.readlink(self._ctx(hdr), hdr.nodeid)

    # --- creating and removing names -----------------------------------------------------

    def _symlink(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        name = a.name()
        target = a.cstring()
        if not target:
            raise err(errno.EINVAL)
        ctx = self._create_ctx(req, hdr, arglen, session, 0, a.rest())
        return self._entry_out(self.fs.symlink(ctx, target, hdr.nodeid, name), session)

    def _mknod(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        mi = a.struct(abi.fuse_mknod_in,
                      size=abi.FUSE_COMPAT_MKNOD_IN_SIZE if session.minor < 12 else None)
        name = a.name()
        ctx = self._create_ctx(req, hdr, arglen, session, mi.umask, a.rest())
        entry = self.fs.mknod(ctx, hdr.nodeid, name, mi.mode, decode_dev(mi.rdev))
        return self._entry_out(entry, session)

    def _mkdir(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        mi = a.struct(abi.fuse_mkdir_in)
        name = a.name()
        ctx = self._create_ctx(req, hdr, arglen, session, mi.umask, a.rest())
        entry = self.fs.mkdir(ctx, hdr.nodeid, name, mi.mode)
        return self._entry_out(entry, session)

    def _unlink(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        name = a.name()
        a.end()
        self.fs.unlink(self._ctx(hdr), hdr.nodeid, name)
        return b""

    def _rmdir(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        name = a.name()
        a.end()
        self.fs.rmdir(self._ctx(hdr), hdr.nodeid, name)
        return b""

    def _rename(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        ri = a.struct(abi.fuse_rename_in)
        return self._do_rename(hdr, a, ri.newdir, 0)

    def _rename2(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        ri = a.struct(abi.fuse_rename2_in)
        return self._do_rename(hdr, a, ri.newdir, ri.flags)

    def _do_rename(self, hdr, a: Args, newdir: int, flags: int) -> bytes:
        old = a.name()
        new = a.name()
        a.end()
        self.fs.rename(self._ctx(hdr), hdr.nodeid, old, newdir, new, flags)
        return b""

    def _link(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        li = a.struct(abi.fuse_link_in)
        name = a.name()
        a.end()
        return self._entry_out(self.fs.link(self._ctx(hdr), li.oldnodeid, hdr.nodeid, name),
                               session)

    # --- the file system as a whole ------------------------------------------------------

    def _access(self, req, hdr, arglen, session) -> bytes:
        ai = self._args(req, arglen).struct(abi.fuse_access_in)
        self.fs.access(self._ctx(hdr), hdr.nodeid, ai.mask)
        return b""

    def _statfs(self, req, hdr, arglen, session) -> bytes:
        st = self.fs.statfs(self._ctx(hdr), hdr.nodeid)
        out = abi.fuse_kstatfs.build(
            blocks=st.blocks, bfree=st.bfree, bavail=st.bavail, files=st.files,
            ffree=st.ffree, bsize=st.bsize, namelen=st.namelen, frsize=st.frsize)
        return out if session.minor >= 4 else out[:abi.FUSE_COMPAT_STATFS_SIZE]

    def _syncfs(self, req, hdr, arglen, session) -> bytes:
        self._args(req, arglen).struct(abi.fuse_syncfs_in)
        self.fs.syncfs(self._ctx(hdr), hdr.nodeid)
        return b""
