"""What every handler group shares: the server's state, the argument cursor, and who the
caller is (the :class:`~pyvirtiofsd.filesystem.Context` of a request).

Each handler group (:mod:`.session`, :mod:`.names`, :mod:`.files`, :mod:`.dirs`,
:mod:`.xattrs`, :mod:`.dax`) is a mixin on :class:`HandlerBase`; :class:`~.dispatch.Server`
combines them and holds the one dispatch table.  A handler has the signature
``(self, req, hdr, arglen, session)`` and returns the reply body (``bytes``), a
:class:`~.wire.Written` or :data:`~.wire.NO_REPLY`; it raises ``OSError`` for an errno.
"""
from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pyvirtiofsd.filesystem import Context, FileSystem
from pyvirtiofsd.fuse import abi, extensions
from pyvirtiofsd.fuse.request import FuseRequest

from .options import ServerOptions
from .wire import IN_HDR, Args, err

if TYPE_CHECKING:
    from .dax import DaxHandler
    from .packing import AttrPacker
    from .session import Session


class HandlerBase:
    """The state :class:`~.dispatch.Server` sets up, as the handler groups see it."""

    fs: FileSystem
    options: ServerOptions
    dax: "DaxHandler | None"
    attrs: "AttrPacker"
    _session: "Session | None"
    _serving: int
    _numbers: "Iterator[int]"
    _idle: "threading.Condition"
    _lifecycle: threading.Lock
    session_changed: "Callable[[Session | None], None] | None"
    """Set by the transport: called under ``_lifecycle`` whenever the session starts
    (before the INIT reply goes out) or ends (before the file system forgets its state)."""
    _dirplus: Callable[..., tuple[bytes, int, int]] | None

    @staticmethod
    def _args(req: FuseRequest, arglen: int) -> Args:
        return Args(req.read_in(IN_HDR, arglen))

    def _ctx(self, hdr: Any, umask: int = 0) -> Context:
        """The caller.  With id translation a forbidden guest id stays as it is here: it
        creates nothing (create-type requests use :meth:`_create_ctx`)."""
        o = self.options
        if not o.translating:
            return Context(hdr.uid, hdr.gid, hdr.pid, umask)
        uid = o.uid_map.to_host_lenient(hdr.uid) if o.uid_map else hdr.uid
        gid = o.gid_map.to_host_lenient(hdr.gid) if o.gid_map else hdr.gid
        return Context(uid, gid, hdr.pid, umask)

    def _create_ctx(self, req: FuseRequest, hdr: Any, arglen: int, session: "Session",
                    umask: int, trailing: bytes) -> Context:
        """The caller of a create-type request, with what its extensions carry.

        ``trailing``: argument bytes after the last expected argument -- a 7.36/7.37 guest's
        security context (those kernels appended it as an argument; later ones send an
        extension counted in ``total_extlen``).  Anything else there is EINVAL.  A guest
        id that ``forbid-guest`` covers fails the request with EPERM."""
        ext = extensions.Extensions()
        if hdr.total_extlen:
            ext = extensions.parse(req.read_in(IN_HDR + arglen, hdr.total_extlen * 8))
        if trailing:
            if hdr.total_extlen or not session.flags & abi.FUSE_SECURITY_CTX:
                raise err(errno.EINVAL)
            ext = extensions.Extensions(extensions.parse_secctx(trailing), ext.groups)
        if ext.secctx is not None and not session.flags & abi.FUSE_SECURITY_CTX:
            raise err(errno.EINVAL)
        if ext.groups and not session.flags & abi.FUSE_CREATE_SUPP_GROUP:
            raise err(errno.EINVAL)
        o = self.options
        uid, gid, groups = hdr.uid, hdr.gid, ext.groups
        if o.uid_map:
            uid = o.uid_map.to_host(uid)
        if o.gid_map:
            gid = o.gid_map.to_host(gid)
            groups = tuple(o.gid_map.to_host(g) for g in groups)
        return Context(uid, gid, hdr.pid, umask, secctx=ext.secctx or (), supp_groups=groups)
