"""Handlers for extended attributes: SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR.

They reach the file system only with ``ServerOptions.xattr`` (the dispatcher answers
ENOSYS otherwise); sizes the guest asks for are cut to XATTR_SIZE_MAX/XATTR_LIST_MAX.
"""
from __future__ import annotations

import errno

from pyvirtiofsd.filesystem import Context
from pyvirtiofsd.fuse import abi

from .base import HandlerBase
from .wire import XATTR_LIST_MAX, XATTR_SIZE_MAX, err, reply_room


class XattrHandlers(HandlerBase):
    """Mixed into :class:`~pyvirtiofsd.server.Server`."""

    def _setxattr(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        # Without FUSE_SETXATTR_EXT (negotiated with POSIX ACLs) the struct is the 8-byte
        # compat one; with it, 16 bytes whose setxattr_flags may ask to clear S_ISGID.
        ext = session.flags & abi.FUSE_SETXATTR_EXT
        si = a.struct(abi.fuse_setxattr_in,
                      size=None if ext else abi.FUSE_COMPAT_SETXATTR_IN_SIZE)
        name = a.cstring()
        value = a.take(si.size)
        a.end()
        if not name:
            raise err(errno.EINVAL)
        ctx = self._ctx(hdr)
        if ext and si.setxattr_flags & abi.FUSE_SETXATTR_ACL_KILL_SGID:
            ctx = Context(ctx.uid, ctx.gid, ctx.pid, kill_sgid=True)
        self.fs.setxattr(ctx, hdr.nodeid, name, value, si.flags)
        return b""

    def _getxattr(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        gi = a.struct(abi.fuse_getxattr_in)
        name = a.cstring()
        a.end()
        if not name:
            raise err(errno.EINVAL)
        size = reply_room(gi.size, XATTR_SIZE_MAX, req, "GETXATTR")
        return _sized(self.fs.getxattr(self._ctx(hdr), hdr.nodeid, name), size)

    def _listxattr(self, req, hdr, arglen, session) -> bytes:
        gi = self._args(req, arglen).struct(abi.fuse_getxattr_in)
        size = reply_room(gi.size, XATTR_LIST_MAX, req, "LISTXATTR")
        names = self.fs.listxattr(self._ctx(hdr), hdr.nodeid)
        return _sized(b"".join(bytes(n) + b"\0" for n in names), size)

    def _removexattr(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        name = a.cstring()
        a.end()
        if not name:
            raise err(errno.EINVAL)
        self.fs.removexattr(self._ctx(hdr), hdr.nodeid, name)
        return b""


def _sized(value: bytes, size: int) -> bytes:
    """The xattr size protocol: size 0 asks for the length, too small is ERANGE."""
    if size == 0:
        return abi.fuse_getxattr_out.pack(len(value), 0)
    if len(value) > size:
        raise err(errno.ERANGE)
    return value
