"""The FUSE server: one request in, one reply out, whatever the guest sent.

:class:`Server` decodes FUSE requests and calls one
:class:`~pyvirtiofsd.filesystem.FileSystem` method per operation.  Protocol policy lives
here so that every file system gets it for free:

* **st_blksize.**  Every ``fuse_attr`` and ``fuse_statx`` the server sends carries
  ``blksize == ServerOptions.guest_page_size``, exactly.  Guest kernels before 6.17 derive
  ``i_blkbits`` from it and DAX writeback fails (WARN + EIO) whenever it differs from the
  guest page size -- larger *or* smaller; a host tmpfs with ``huge=always`` says 2 MiB.
  :class:`AttrPacker` is the only Python code that turns attributes into bytes; the C hot
  path's GETATTR/LOOKUP/READDIRPLUS pack the same bytes (cext/pack.c).
* cache policy (entry/attr timeouts, ``FOPEN_*``), read-only mode, xattr on/off, INIT
  negotiation, READDIRPLUS built from ``readdir`` + ``lookup``.

Where things are, one concern per module:

=================  ==========================================================================
``dispatch.py``    :class:`Server`: framing, request bounds, the dispatch table, replies
``session.py``     INIT negotiation, DESTROY, reset; :class:`Session`, :data:`FUSE_MAX_MINOR`
``options.py``     :class:`ServerOptions`, :class:`CachePolicy`
``packing.py``     :class:`AttrPacker` and the entry/attr/open reply structs
``names.py``       LOOKUP, FORGET, GETATTR/SETATTR/STATX, creating and removing names
``files.py``       OPEN, CREATE, READ, WRITE, RELEASE, FSYNC...
``dirs.py``        OPENDIR, READDIR, READDIRPLUS...
``xattrs.py``      GET/SET/LIST/REMOVEXATTR
``dax.py``         SETUPMAPPING/REMOVEMAPPING and the :class:`DaxHandler` contract
``base.py``        what the handler groups share: the server's state, the caller's Context
``wire.py``        request limits (:data:`ARGS_MAX`), the argument cursor, reply markers
=================  ==========================================================================
"""
from .dax import DaxHandler
from .dispatch import Server
from .options import NEGOTIATION, CachePolicy, ServerOptions  # noqa: F401 - NEGOTIATION too
from .packing import AttrPacker
from .session import FUSE_MAX_MINOR, Session
# importable from here as before the split (the CLI and tests use them)
from .wire import ARGS_MAX, NO_REPLY, PATH_MAX, XATTR_LIST_MAX, XATTR_SIZE_MAX  # noqa: F401

__all__ = ["AttrPacker", "CachePolicy", "DaxHandler", "FUSE_MAX_MINOR", "Server",
           "ServerOptions", "Session"]
