"""FUSE_SETUPMAPPING and FUSE_REMOVEMAPPING, and :class:`DaxHandler`: everything the
server asks of the device's DAX window (:class:`pyvirtiofsd.dax.DaxWindow` is the one the
daemon uses).

Without a handler both requests answer ENOSYS.  With one, the server also tells it about
the events that change what may stay mapped: a file's size may have changed (``refresh``
after WRITE, SETATTR, FALLOCATE, GETATTR, COPY_FILE_RANGE), a handle was released, an inode
forgotten, the session ended (``reset``); and asks it which inodes carry FUSE_ATTR_DAX
(``inode_dax``, for every attribute the server packs).
"""
from __future__ import annotations

import errno
from typing import Protocol

from pyvirtiofsd.filesystem import Attr, Context
from pyvirtiofsd.fuse import abi

from .base import HandlerBase
from .wire import err


class DaxHandler(Protocol):
    """What the device provides to serve FUSE_SETUPMAPPING/REMOVEMAPPING (virtio-fs DAX).

    Errors are ``OSError(errno)`` as for file-system methods.  The notifications
    (``refresh``, ``released``, ``forgotten``, ``reset``) must not raise for an inode or
    handle they know nothing of.
    """

    init_flags: int
    """Extra INIT flags to offer (e.g. ``FUSE_HAS_INODE_DAX``)."""

    def setupmapping(self, ctx: Context, nodeid: int, fh: int, foffset: int, length: int,
                     flags: int, moffset: int) -> None:
        """Map ``length`` bytes of the file at ``foffset`` at window offset ``moffset``
        (``flags``: ``FUSE_SETUPMAPPING_FLAG_*``; ``fh`` all ones: no handle named)."""

    def removemapping(self, ctx: Context, ranges: list[tuple[int, int]]) -> None:
        """Unmap each ``(moffset, length)`` of the window."""

    def refresh(self, nodeid: int) -> None:
        """The file's size may have changed: re-fit its mappings to it."""

    def released(self, nodeid: int, fh: int) -> None:
        """Handle ``fh`` was released: mappings made through it end."""

    def forgotten(self, nodeid: int, still_known: bool) -> None:
        """The guest dropped lookups of ``nodeid``; ``still_known``: it still holds some."""

    def reset(self, unmap: bool = False) -> None:
        """The session ended: forget every mapping (``unmap``: also ask the front-end to
        unmap them -- on DESTROY; on a device reset the front-end dropped the window)."""

    def inode_dax(self, attr: Attr) -> bool:
        """Whether the guest should map the file with these attributes (FUSE_ATTR_DAX)."""


class DaxHandlers(HandlerBase):
    """Mixed into :class:`~pyvirtiofsd.server.Server`."""

    def _setupmapping(self, req, hdr, arglen, session) -> bytes:
        if self.dax is None:
            raise err(errno.ENOSYS)
        si = self._args(req, arglen).struct(abi.fuse_setupmapping_in)
        if self.options.readonly and si.flags & abi.FUSE_SETUPMAPPING_FLAG_WRITE:
            raise err(errno.EROFS)
        self.dax.setupmapping(self._ctx(hdr), hdr.nodeid, si.fh, si.foffset, si.len, si.flags,
                              si.moffset)
        return b""

    def _removemapping(self, req, hdr, arglen, session) -> bytes:
        if self.dax is None:
            raise err(errno.ENOSYS)
        a = self._args(req, arglen)
        ri = a.struct(abi.fuse_removemapping_in)
        ranges = [tuple(a.struct(abi.fuse_removemapping_one)) for _ in range(ri.count)]
        a.end()
        self.dax.removemapping(self._ctx(hdr), ranges)
        return b""
