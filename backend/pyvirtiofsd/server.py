"""The FUSE server: one request in, one reply out, whatever the guest sent.

:meth:`Server.handle` parses ``fuse_in_header``, decodes the arguments of the opcode, calls
the matching :class:`~pyvirtiofsd.filesystem.FileSystem` method and writes the reply into
the request's out area.  It never raises: a failing file-system call becomes ``-errno``, a
bug in a file system becomes ``-EIO`` plus a logged error, a malformed request ``-EINVAL``.

Protocol policy lives here so that every file system gets it for free:

* **st_blksize.**  Every ``fuse_attr`` and ``fuse_statx`` the server sends carries
  ``blksize == ServerOptions.guest_page_size``, exactly.  Guest kernels before 6.17 derive
  ``i_blkbits`` from it and DAX writeback fails (WARN + EIO) whenever it differs from the
  guest page size -- larger *or* smaller; a host tmpfs with ``huge=always`` says 2 MiB.
  :class:`AttrPacker` is the only code that turns attributes into bytes, so no reply can
  carry another value.
* cache policy (entry/attr timeouts, ``FOPEN_*``), read-only mode, xattr on/off, INIT
  negotiation, READDIRPLUS built from ``readdir`` + ``lookup``.

Thread safety: ``handle`` may run concurrently on many threads.  Per-session state is an
immutable :class:`Session` swapped atomically by INIT/DESTROY.
"""
from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import structlog

from pyvirtiofsd.filesystem import (
    DIRPLUS_FULL, DIRPLUS_PYTHON, Attr, Context, Entry, FileRange, FileSystem, Opened, SetAttr,
    Statx, WriteData,
)
from pyvirtiofsd.fuse import abi, extensions
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.fuse.request import FuseRequest
from pyvirtiofsd.guestfaults import faults
from pyvirtiofsd.opslog import OpsRecorder

log = structlog.get_logger()

FUSE_MAX_MINOR = 39
"""The newest protocol minor this server speaks.

7.39 is the newest minor whose additions we implement (FUSE_STATX).  Everything 7.40-7.45
add is either opt-in through INIT flags we do not offer (PASSTHROUGH and its
``backing_id``/``max_stack_depth``, HAS_RESEND, ALLOW_IDMAP, OVER_IO_URING,
REQUEST_TIMEOUT) or a new opcode we would answer ENOSYS (COPY_FILE_RANGE_64); claiming a
minor we have not read would promise semantics we never checked.  ``fuse_init_out`` is the
same 64 bytes for every minor from 7.23, so nothing else changes with the choice."""

_HDR = abi.fuse_in_header.size       # 40
_OUT_HDR = abi.fuse_out_header.size  # 16

# Linux's limits (include/uapi/linux/limits.h): what any argument of a FUSE request can be.
PATH_MAX = 4096
XATTR_SIZE_MAX = 65536
XATTR_LIST_MAX = 65536

ARGS_MAX = 4096 + 2 * PATH_MAX + XATTR_SIZE_MAX
"""The most argument bytes (after ``fuse_in_header``) any request but WRITE may carry.

The largest are SETXATTR (a name and a value of at most XATTR_SIZE_MAX), SYMLINK (a name and
a target of at most PATH_MAX), RENAME2 (two names), plus the fixed structs and the
extensions of create-type requests (a security context, supplementary groups), for which
4 KiB is ample.  A WRITE may carry ``fuse_write_in`` + ``max_write``.  A request claiming
more is refused before any of it is read: a chain's length is no bound, since its
descriptors may all point at the same guest pages."""


class CachePolicy:
    """``ServerOptions.cache`` values, as virtiofsd's ``--cache``."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"
    METADATA = "metadata"
    """Metadata cached as with ``always``, file data never (FOPEN_DIRECT_IO)."""

    TIMEOUTS = {AUTO: 1.0, ALWAYS: 86400.0, NEVER: 0.0, METADATA: 86400.0}


NEGOTIATION = ("never", "auto", "always")
"""``posix_acl``/``security_label`` modes: off; on if the guest supports it; on, and a guest
that does not support it cannot mount (INIT fails with EPROTO)."""


@dataclass(frozen=True)
class ServerOptions:
    """What the server does on behalf of every file system.

    ``guest_page_size``: the guest's PAGE_SIZE; every blksize sent is exactly this.
    ``readonly``: refuse every modifying operation with EROFS (and opens for writing).
    ``xattr``: when False (the default, as virtiofsd), GET/SET/LIST/REMOVEXATTR answer ENOSYS
    without reaching the file system, so the guest kernel stops asking and returns
    EOPNOTSUPP to applications.
    ``cache``: ``never`` → timeouts 0 and FOPEN_DIRECT_IO; ``auto`` → 1 s timeouts;
    ``always`` → 1 day timeouts, FOPEN_KEEP_CACHE and FOPEN_CACHE_DIR (virtiofsd's meaning).
    ``writeback``: offer FUSE_WRITEBACK_CACHE (guest-side write-back page cache).
    ``readdirplus``: offer READDIRPLUS; ``None`` = on unless ``cache`` is ``never``.
    ``allow_mmap``: offer DIRECT_IO_ALLOW_MMAP (shared mmap with ``cache=never``).
    ``max_write``: largest WRITE payload (also sets ``max_pages``).
    ``map_alignment``: ``None`` → never echo FUSE_MAP_ALIGNMENT; else log2 of the alignment
    SETUPMAPPING offsets need (12 for 4 KiB host pages), sent when the guest offers it.
    ``ops_log``: one structlog ``fuse op`` event per request (costs; off by default).  For an
    ops-log file and statistics pass ``Server(ops=OpsRecorder(...))`` instead.
    ``posix_acl``: ``never``/``auto``/``always`` (:data:`NEGOTIATION`) offer POSIX_ACL with
    DONT_MASK and SETXATTR_EXT: the guest enforces ACLs and leaves the umask to us.
    ``security_label``: the same for SECURITY_CTX (labels sent with create-type requests).
    ``announce_submounts``: offer SUBMOUNTS (mount points inside the share get their own
    st_dev in the guest).  ``killpriv_v2``: offer HANDLE_KILLPRIV_V2 (the guest leaves
    clearing set-user/group-ID on write/truncate/chown to us).
    ``uid_map``/``gid_map``: :class:`~pyvirtiofsd.passthrough.idmap.IdMap` translations
    applied to every caller id and every attribute sent.
    """

    guest_page_size: int = 4096
    readonly: bool = False
    xattr: bool = False
    cache: str = CachePolicy.AUTO
    writeback: bool = False
    readdirplus: bool | None = None
    allow_mmap: bool = False
    max_write: int = 1 << 20
    map_alignment: int | None = None
    ops_log: bool = False
    posix_acl: str = "never"
    security_label: str = "never"
    announce_submounts: bool = False
    killpriv_v2: bool = False
    uid_map: Any = None
    gid_map: Any = None

    def __post_init__(self) -> None:
        p = self.guest_page_size
        if p < 4096 or p > (1 << 21) or p & (p - 1):
            raise ValueError(f"guest_page_size {p} is not a power of two in 4 KiB..2 MiB")
        if self.cache not in CachePolicy.TIMEOUTS:
            raise ValueError(f"cache must be one of {sorted(CachePolicy.TIMEOUTS)}")
        if self.max_write < 4096:
            raise ValueError("max_write below 4096")
        if self.map_alignment is not None and not 0 <= self.map_alignment <= 21:
            raise ValueError("map_alignment is log2 of an alignment, at most 21 (2 MiB)")
        for name in ("posix_acl", "security_label"):
            if getattr(self, name) not in NEGOTIATION:
                raise ValueError(f"{name} must be one of {NEGOTIATION}")
        if self.posix_acl != "never" and (self.uid_map or self.gid_map):
            raise ValueError("POSIX ACLs cannot be combined with uid/gid translation: the "
                             "ids inside ACLs would not be translated")

    @property
    def max_pages(self) -> int:
        """``fuse_init_out.max_pages``: enough guest pages for ``max_write``."""
        return min(0xFFFF, -(-self.max_write // self.guest_page_size))

    @property
    def max_read(self) -> int:
        """The most a READ or READDIR(PLUS) reply may carry: ``max_pages`` pages."""
        return self.max_pages * self.guest_page_size

    @property
    def translating(self) -> bool:
        return bool(self.uid_map) or bool(self.gid_map)

    @property
    def timeout(self) -> float:
        return CachePolicy.TIMEOUTS[self.cache]

    @property
    def use_readdirplus(self) -> bool:
        if self.readdirplus is None:
            return self.cache != CachePolicy.NEVER
        return self.readdirplus


class DaxHandler(Protocol):
    """What the device provides to serve FUSE_SETUPMAPPING/REMOVEMAPPING (virtio-fs DAX).

    ``init_flags``: extra INIT flags to offer (e.g. ``FUSE_HAS_INODE_DAX``).
    Errors are ``OSError(errno)`` as for file-system methods.
    """

    init_flags: int

    def setupmapping(self, ctx: Context, nodeid: int, fh: int, foffset: int, length: int,
                     flags: int, moffset: int) -> None: ...

    def removemapping(self, ctx: Context, ranges: list[tuple[int, int]]) -> None: ...


@dataclass(frozen=True)
class Session:
    """What INIT negotiated; replaced whole, never mutated."""

    minor: int
    flags: int
    max_write: int
    max_read: int
    """``max_pages`` x guest page size: the most a READ or READDIR reply may carry."""

    def request_limit(self, opcode: int) -> int:
        """The most argument bytes a request of ``opcode`` may claim (see ARGS_MAX)."""
        if opcode == Opcode.FUSE_WRITE:
            return abi.fuse_write_in.size + self.max_write
        return ARGS_MAX


class AttrPacker:
    """The one place attributes become wire bytes -- and get the blksize clamp.

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
            a.ino & _U64, a.size & _U64, a.blocks & _U64,
            a.atime & _U64, a.mtime & _U64, a.ctime & _U64,
            a.atimensec, a.mtimensec, a.ctimensec,
            a.mode & _U32, a.nlink & _U32, self.uid(a.uid & _U32), self.gid(a.gid & _U32),
            _encode_dev(a.rdev), self.blksize, flags & _U32)

    def fuse_statx(self, s: Statx) -> bytes:
        return abi.fuse_statx.pack(
            s.mask & _U32, self.blksize, s.attributes & _U64, s.nlink & _U32,
            self.uid(s.uid & _U32), self.gid(s.gid & _U32), s.mode & 0xFFFF, 0, s.ino & _U64,
            s.size & _U64,
            s.blocks & _U64, s.attributes_mask & _U64,
            s.atime[0], s.atime[1], 0, s.btime[0], s.btime[1], 0,
            s.ctime[0], s.ctime[1], 0, s.mtime[0], s.mtime[1], 0,
            s.rdev_major, s.rdev_minor, s.dev_major, s.dev_minor)


_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def _same(ident: int) -> int:
    return ident


def _encode_dev(dev: int) -> int:
    """A host dev_t as the 32-bit "new" encoding the guest decodes (``new_decode_dev``)."""
    major, minor = os.major(dev), os.minor(dev)
    return ((minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12)) & _U32


def _decode_dev(dev: int) -> int:
    """The guest's 32-bit ``new_encode_dev`` value as a host dev_t."""
    return os.makedev((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))


def _split_time(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


class _NoReply:
    """Marker: the opcode gets no FUSE reply (FORGET, BATCH_FORGET, INTERRUPT)."""


NO_REPLY = _NoReply()


@dataclass(frozen=True)
class _Written:
    """Marker: the handler already wrote ``size`` reply bytes after the out header."""

    size: int


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class _Args:
    """A cursor over a request's argument bytes that refuses to read past them."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def struct(self, ws: abi.WireStruct, size: int | None = None,
               min_size: int | None = None) -> Any:
        """Parse ``ws``, reading any missing tail as zeros.

        ``size``: exactly this many bytes hold the struct (older minors sent shorter
        versions of some structs, and a name may follow).  Otherwise the struct is the
        last thing in the request and may be as short as ``min_size``.
        """
        avail = len(self.data) - self.pos
        if size is None:
            need, take = (ws.size if min_size is None else min_size), min(avail, ws.size)
        else:
            need = take = size
        if avail < need:
            raise _err(errno.EINVAL)
        raw = self.data[self.pos:self.pos + take]
        self.pos += take
        if take < ws.size:
            raw += bytes(ws.size - take)
        return ws.parse(raw)

    def cstring(self) -> bytes:
        """A NUL-terminated string."""
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise _err(errno.EINVAL)
        s = self.data[self.pos:end]
        self.pos = end + 1
        return s

    def name(self, allow_dots: bool = False) -> bytes:
        """A directory-entry name: one component, never empty, never containing '/'."""
        name = self.cstring()
        if not name or b"/" in name:
            raise _err(errno.EINVAL)
        if len(name) > abi.FUSE_NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        if not allow_dots and name in (b".", b".."):
            raise _err(errno.EINVAL)
        return name

    def rest(self) -> bytes:
        """Whatever is left (consumed)."""
        s = self.data[self.pos:]
        self.pos = len(self.data)
        return s

    def take(self, n: int) -> bytes:
        if len(self.data) - self.pos < n:
            raise _err(errno.EINVAL)
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s

    def end(self) -> None:
        """Nothing may follow (a name with an embedded NUL shows up as trailing bytes)."""
        if self.pos != len(self.data):
            raise _err(errno.EINVAL)


_MODIFYING = frozenset({
    Opcode.FUSE_SETATTR, Opcode.FUSE_SYMLINK, Opcode.FUSE_MKNOD, Opcode.FUSE_MKDIR,
    Opcode.FUSE_UNLINK, Opcode.FUSE_RMDIR, Opcode.FUSE_RENAME, Opcode.FUSE_RENAME2,
    Opcode.FUSE_LINK, Opcode.FUSE_WRITE, Opcode.FUSE_CREATE, Opcode.FUSE_FALLOCATE,
    Opcode.FUSE_COPY_FILE_RANGE, Opcode.FUSE_SETXATTR, Opcode.FUSE_REMOVEXATTR,
    Opcode.FUSE_TMPFILE,
})
_NO_REPLY_OPS = frozenset({Opcode.FUSE_FORGET, Opcode.FUSE_BATCH_FORGET, Opcode.FUSE_INTERRUPT})
# Operations after which a file's DAX mappings are re-fitted to its size.
_RESIZING = frozenset({
    Opcode.FUSE_WRITE, Opcode.FUSE_SETATTR, Opcode.FUSE_FALLOCATE, Opcode.FUSE_GETATTR,
    Opcode.FUSE_COPY_FILE_RANGE,
})

_ACL_FLAGS = abi.FUSE_POSIX_ACL | abi.FUSE_DONT_MASK | abi.FUSE_SETXATTR_EXT

_XATTR_OPS = frozenset({
    Opcode.FUSE_GETXATTR, Opcode.FUSE_SETXATTR, Opcode.FUSE_LISTXATTR, Opcode.FUSE_REMOVEXATTR,
})


class Server:
    """Serve ``fs`` to one guest.  See the module docstring.

    ``dax``: the SETUPMAPPING/REMOVEMAPPING handler the device provides when it has a DAX
    window; ``None`` answers both with ENOSYS.
    ``ops``: an :class:`~pyvirtiofsd.opslog.OpsRecorder` that sees every request (ops log,
    statistics); ``None`` costs one test per request.
    """

    def __init__(self, fs: FileSystem, options: ServerOptions | None = None,
                 dax: DaxHandler | None = None, ops: OpsRecorder | None = None):
        self.fs = fs
        self.options = options or ServerOptions()
        if ops is None and self.options.ops_log:
            ops = OpsRecorder(events=True)
        self.ops = ops
        self.dax = dax
        self.attrs = AttrPacker(self.options.guest_page_size,
                                dax_policy=getattr(dax, "inode_dax", None),
                                uid_map=self.options.uid_map, gid_map=self.options.gid_map)
        # READDIRPLUS records packed by the file system itself (PassthroughFs: in C) -- only
        # where AttrPacker adds nothing to the host's attributes.
        plain = (self.attrs.dax_policy is None and not self.options.uid_map
                 and not self.options.gid_map)
        self._dirplus = getattr(fs, "readdirplus_records", None) if plain else None
        self._session: Session | None = None
        # What bounds a request before INIT (only INIT itself is served then).
        self._no_session = Session(0, 0, self.options.max_write, self.options.max_read)
        self._lifecycle = threading.Lock()
        self._handlers: dict[int, Callable[..., Any]] = {
            Opcode.FUSE_LOOKUP: self._lookup,
            Opcode.FUSE_FORGET: self._forget,
            Opcode.FUSE_BATCH_FORGET: self._batch_forget,
            Opcode.FUSE_GETATTR: self._getattr,
            Opcode.FUSE_SETATTR: self._setattr,
            Opcode.FUSE_STATX: self._statx,
            Opcode.FUSE_READLINK: self._readlink,
            Opcode.FUSE_SYMLINK: self._symlink,
            Opcode.FUSE_MKNOD: self._mknod,
            Opcode.FUSE_MKDIR: self._mkdir,
            Opcode.FUSE_UNLINK: self._unlink,
            Opcode.FUSE_RMDIR: self._rmdir,
            Opcode.FUSE_RENAME: self._rename,
            Opcode.FUSE_RENAME2: self._rename2,
            Opcode.FUSE_LINK: self._link,
            Opcode.FUSE_OPEN: self._open,
            Opcode.FUSE_CREATE: self._create,
            Opcode.FUSE_TMPFILE: self._tmpfile,
            Opcode.FUSE_READ: self._read,
            Opcode.FUSE_WRITE: self._write,
            Opcode.FUSE_STATFS: self._statfs,
            Opcode.FUSE_RELEASE: self._release,
            Opcode.FUSE_FSYNC: self._fsync,
            Opcode.FUSE_FLUSH: self._flush,
            Opcode.FUSE_OPENDIR: self._opendir,
            Opcode.FUSE_READDIR: self._readdir,
            Opcode.FUSE_READDIRPLUS: self._readdirplus,
            Opcode.FUSE_RELEASEDIR: self._releasedir,
            Opcode.FUSE_FSYNCDIR: self._fsyncdir,
            Opcode.FUSE_ACCESS: self._access,
            Opcode.FUSE_SETXATTR: self._setxattr,
            Opcode.FUSE_GETXATTR: self._getxattr,
            Opcode.FUSE_LISTXATTR: self._listxattr,
            Opcode.FUSE_REMOVEXATTR: self._removexattr,
            Opcode.FUSE_INTERRUPT: self._interrupt,
            Opcode.FUSE_DESTROY: self._destroy,
            Opcode.FUSE_FALLOCATE: self._fallocate,
            Opcode.FUSE_LSEEK: self._lseek,
            Opcode.FUSE_COPY_FILE_RANGE: self._copy_file_range,
            Opcode.FUSE_SYNCFS: self._syncfs,
            Opcode.FUSE_SETUPMAPPING: self._setupmapping,
            Opcode.FUSE_REMOVEMAPPING: self._removemapping,
        }

    # --- public ---------------------------------------------------------------------------

    @property
    def session(self) -> Session | None:
        """The negotiated session, or ``None`` before INIT / after DESTROY."""
        return self._session

    def reset(self) -> None:
        """End the session as DESTROY would (device reset, guest gone)."""
        with self._lifecycle:
            self._end_session("reset")

    def handle(self, req: FuseRequest) -> None:
        """Serve one request and complete it exactly once.  Never raises."""
        if self.ops is not None:   # ops log / statistics: the request records its completion
            req = self.ops.wrap(req)
        unique = 0
        try:
            unique, result, error = self._dispatch(req)
        except Exception:  # noqa: BLE001 - last line of defence: the guest must get an answer
            log.error("fuse request handling failed", exc_info=True)
            result, error = None, errno.EIO
        try:
            self._finish(req, unique, result, error)
        except Exception:  # noqa: BLE001 - a transport whose complete() fails: nothing to do
            log.error("completing fuse request failed", unique=unique, exc_info=True)

    # --- framing --------------------------------------------------------------------------

    def _dispatch(self, req: FuseRequest) -> tuple[int, Any, int]:
        try:
            head = req.read_in(0, _HDR)
        except OSError:
            # EFAULT: the guest pointed the request outside its memory.  The transport that
            # popped it has said so already (one line per condition, see guestfaults).
            return 0, None, errno.EFAULT
        if len(head) < _HDR:
            unique = int.from_bytes(head[8:16], "little") if len(head) >= 16 else 0
            faults.report("fuse request shorter than fuse_in_header", in_len=req.in_len)
            return unique, None, errno.EINVAL
        hdr = abi.fuse_in_header.parse(head)
        ext = hdr.total_extlen * 8
        if hdr.len < _HDR or hdr.len > req.in_len or ext > hdr.len - _HDR:
            faults.report("fuse request length mismatch", opcode=_opname(hdr.opcode),
                          len=hdr.len, in_len=req.in_len, total_extlen=hdr.total_extlen)
            return _refused(hdr)
        session = self._session
        limit = (session or self._no_session).request_limit(hdr.opcode)
        if hdr.len - _HDR > limit:
            faults.report("fuse request longer than its opcode allows", opcode=_opname(hdr.opcode),
                          len=hdr.len, limit=_HDR + limit)
            return _refused(hdr)
        arglen = hdr.len - _HDR - ext   # extensions (none negotiated) are not arguments

        if hdr.opcode == Opcode.FUSE_INIT:
            return hdr.unique, *self._run(self._init, req, hdr, arglen)
        if session is None:
            if hdr.opcode in _NO_REPLY_OPS:
                return hdr.unique, NO_REPLY, 0
            return hdr.unique, None, errno.EIO
        handler = self._handlers.get(hdr.opcode)
        if handler is None:
            return hdr.unique, None, errno.ENOSYS
        if self.options.readonly and hdr.opcode in _MODIFYING:
            return hdr.unique, None, errno.EROFS
        if not self.options.xattr and hdr.opcode in _XATTR_OPS:
            return hdr.unique, None, errno.ENOSYS

        result, error = self._run(handler, req, hdr, arglen, session)
        if self.dax is not None and not error and hdr.opcode in _RESIZING:
            self.dax.refresh(hdr.nodeid)  # DAX mappings follow the file's size
        return hdr.unique, result, error

    def _run(self, handler: Callable[..., Any], req: FuseRequest, hdr: Any, arglen: int,
             *extra: Any) -> tuple[Any, int]:
        """Call a handler; turn OSError into an errno and anything else into a logged EIO."""
        try:
            return handler(req, hdr, arglen, *extra), 0
        except OSError as e:
            code = e.errno if isinstance(e.errno, int) and 0 < e.errno < 4096 else errno.EIO
            return None, code
        except OverflowError:
            # A 64-bit offset or size from the guest that the host's off_t cannot hold
            # (the kernel would say EINVAL for the negative value it would become).
            return None, errno.EINVAL
        except Exception:  # noqa: BLE001 - a file-system bug must not reach the guest as a hang
            log.error("file system raised", opcode=_opname(hdr.opcode), nodeid=hdr.nodeid,
                      exc_info=True)
            return None, errno.EIO

    def _finish(self, req: FuseRequest, unique: int, result: Any, error: int) -> None:
        if result is NO_REPLY and not error:
            req.complete(0)
            return
        try:
            if error:
                req.write_out(0, abi.fuse_out_header.pack(_OUT_HDR, -error, unique))
                used = _OUT_HDR
            else:
                if isinstance(result, _Written):
                    size = result.size
                else:
                    body = bytes(result or b"")
                    size = len(body)
                    if _OUT_HDR + size > req.out_len:
                        faults.report("fuse reply does not fit the out area",
                                      reply=_OUT_HDR + size, out_len=req.out_len)
                        req.write_out(0, abi.fuse_out_header.pack(_OUT_HDR, -errno.EIO, unique))
                        req.complete(_OUT_HDR)
                        return
                    if body:
                        req.write_out(_OUT_HDR, body)
                req.write_out(0, abi.fuse_out_header.pack(_OUT_HDR + size, 0, unique))
                used = _OUT_HDR + size
        except (OSError, ValueError) as e:  # an out area too small for the header, or unmapped
            faults.report("cannot write fuse reply", out_len=req.out_len, error=str(e))
            used = 0
        req.complete(used)

    @staticmethod
    def _args(req: FuseRequest, arglen: int) -> _Args:
        return _Args(req.read_in(_HDR, arglen))

    def _ctx(self, hdr: Any, umask: int = 0) -> Context:
        """The caller.  With id translation a forbidden guest id stays as it is here: it
        creates nothing (create-type requests use :meth:`_create_ctx`)."""
        o = self.options
        if not o.translating:
            return Context(hdr.uid, hdr.gid, hdr.pid, umask)
        uid = o.uid_map.to_host_lenient(hdr.uid) if o.uid_map else hdr.uid
        gid = o.gid_map.to_host_lenient(hdr.gid) if o.gid_map else hdr.gid
        return Context(uid, gid, hdr.pid, umask)

    def _create_ctx(self, req: FuseRequest, hdr: Any, arglen: int, session: Session,
                    umask: int, trailing: bytes) -> Context:
        """The caller of a create-type request, with what its extensions carry.

        ``trailing``: argument bytes after the last expected argument -- a 7.36/7.37 guest's
        security context (those kernels appended it as an argument; later ones send an
        extension counted in ``total_extlen``).  Anything else there is EINVAL.  A guest
        id that ``forbid-guest`` covers fails the request with EPERM."""
        ext = extensions.Extensions()
        if hdr.total_extlen:
            ext = extensions.parse(req.read_in(_HDR + arglen, hdr.total_extlen * 8))
        if trailing:
            if hdr.total_extlen or not session.flags & abi.FUSE_SECURITY_CTX:
                raise _err(errno.EINVAL)
            ext = extensions.Extensions(extensions.parse_secctx(trailing), ext.groups)
        if ext.secctx is not None and not session.flags & abi.FUSE_SECURITY_CTX:
            raise _err(errno.EINVAL)
        if ext.groups and not session.flags & abi.FUSE_CREATE_SUPP_GROUP:
            raise _err(errno.EINVAL)
        o = self.options
        uid, gid, groups = hdr.uid, hdr.gid, ext.groups
        if o.uid_map:
            uid = o.uid_map.to_host(uid)
        if o.gid_map:
            gid = o.gid_map.to_host(gid)
            groups = tuple(o.gid_map.to_host(g) for g in groups)
        return Context(uid, gid, hdr.pid, umask, secctx=ext.secctx or (), supp_groups=groups)

    # --- reply builders ---------------------------------------------------------------

    def _entry_out(self, entry: Entry, session: Session, full: bool = False) -> bytes:
        """``fuse_entry_out``; cut to the pre-7.9 size for old guests unless ``full``
        (READDIRPLUS, 7.21+, always carries whole ones)."""
        t = self.options.timeout
        ev, evn = _split_time(t if entry.entry_timeout is None else entry.entry_timeout)
        av, avn = _split_time(t if entry.attr_timeout is None else entry.attr_timeout)
        out = (abi.fuse_entry_out_head.pack(entry.nodeid, entry.generation, ev, av, evn, avn)
               + self.attrs.fuse_attr(entry.attr))
        return out if full or session.minor >= 9 else out[:abi.FUSE_COMPAT_ENTRY_OUT_SIZE]

    def _attr_out(self, result: Attr | tuple[Attr, float], session: Session) -> bytes:
        attr, timeout = result if isinstance(result, tuple) else (result, self.options.timeout)
        av, avn = _split_time(timeout)
        out = abi.fuse_attr_out_head.pack(av, avn, 0) + self.attrs.fuse_attr(attr)
        return out if session.minor >= 9 else out[:abi.FUSE_COMPAT_ATTR_OUT_SIZE]

    def _open_out(self, opened: Opened, is_dir: bool) -> bytes:
        flags = opened.open_flags
        cache = self.options.cache
        if cache in (CachePolicy.NEVER, CachePolicy.METADATA) and not is_dir:
            flags |= abi.FOPEN_DIRECT_IO
        elif cache == CachePolicy.ALWAYS:
            flags |= abi.FOPEN_CACHE_DIR if is_dir else abi.FOPEN_KEEP_CACHE
        return abi.fuse_open_out.pack(opened.fh, flags, 0)

    # --- INIT / DESTROY ---------------------------------------------------------------

    def _wanted_flags(self) -> int:
        """INIT flags this server would enable if the guest offers them."""
        o = self.options
        want = (abi.FUSE_ASYNC_READ | abi.FUSE_PARALLEL_DIROPS | abi.FUSE_BIG_WRITES
                | abi.FUSE_AUTO_INVAL_DATA | abi.FUSE_ASYNC_DIO | abi.FUSE_ATOMIC_O_TRUNC
                | abi.FUSE_MAX_PAGES | abi.FUSE_INIT_EXT | abi.FUSE_CREATE_SUPP_GROUP)
        if o.announce_submounts:
            want |= abi.FUSE_SUBMOUNTS
        if o.killpriv_v2 and not o.readonly:
            want |= abi.FUSE_HANDLE_KILLPRIV_V2
        if o.posix_acl != "never" and o.xattr:
            want |= _ACL_FLAGS
        if o.security_label != "never" and o.xattr and not o.readonly:
            want |= abi.FUSE_SECURITY_CTX
        if o.use_readdirplus:
            want |= abi.FUSE_DO_READDIRPLUS | abi.FUSE_READDIRPLUS_AUTO
        if o.writeback and not o.readonly:
            want |= abi.FUSE_WRITEBACK_CACHE
        if o.allow_mmap:
            want |= abi.FUSE_DIRECT_IO_ALLOW_MMAP
        if o.map_alignment is not None:
            want |= abi.FUSE_MAP_ALIGNMENT
        if type(self.fs).open is FileSystem.open:
            want |= abi.FUSE_NO_OPEN_SUPPORT
        if type(self.fs).opendir is FileSystem.opendir:
            want |= abi.FUSE_NO_OPENDIR_SUPPORT
        if self.dax is not None:
            want |= getattr(self.dax, "init_flags", 0)
        return want

    def _init(self, req: FuseRequest, hdr: Any, arglen: int) -> bytes:
        a = self._args(req, arglen)
        ii = a.struct(abi.fuse_init_in, min_size=8)   # major/minor are all the oldest kernels sent
        if ii.major > abi.FUSE_KERNEL_VERSION:
            # FUSE rule: answer with our major; the kernel retries INIT with it.
            log.info("fuse init: kernel major newer, answering ours", kernel_major=ii.major)
            return abi.fuse_init_out.build(major=abi.FUSE_KERNEL_VERSION, minor=FUSE_MAX_MINOR)
        if ii.major < abi.FUSE_KERNEL_VERSION:
            faults.report("fuse init: unsupported major", major=ii.major, minor=ii.minor)
            raise _err(errno.EPROTO)

        minor = min(ii.minor, FUSE_MAX_MINOR)
        offered = ii.flags
        if ii.flags & abi.FUSE_INIT_EXT:
            offered |= ii.flags2 << 32
        enable = offered & self._wanted_flags()
        o = self.options
        # "always": a guest that cannot do it must not mount without it (virtiofsd's rule)
        if o.posix_acl == "always" and enable & _ACL_FLAGS != _ACL_FLAGS:
            log.error("fuse init: --posix-acl=always but the guest cannot do POSIX ACLs",
                      guest_flags=hex(offered))
            raise _err(errno.EPROTO)
        if o.security_label == "always" and not enable & abi.FUSE_SECURITY_CTX:
            log.error("fuse init: --security-label=always but the guest sends no security "
                      "contexts", guest_flags=hex(offered))
            raise _err(errno.EPROTO)
        if enable & abi.FUSE_POSIX_ACL and enable & _ACL_FLAGS != _ACL_FLAGS:
            enable &= ~_ACL_FLAGS    # auto: ACLs only with DONT_MASK and SETXATTR_EXT too
        with self._lifecycle:
            if self._session is not None:
                # A guest that rebooted without DESTROY mounts again: start afresh.
                self._end_session("new INIT")
            kept = self.fs.init(enable)
            if kept is not None:        # a file system that forgot to return keeps all
                enable &= kept
            session = Session(minor=minor, flags=enable, max_write=o.max_write,
                              max_read=o.max_read)
            self._session = session
        split = abi.InitFlags.split(enable)
        out = abi.fuse_init_out.build(
            major=abi.FUSE_KERNEL_VERSION, minor=minor, max_readahead=ii.max_readahead,
            flags=split.flags, max_background=0xFFFF, congestion_threshold=0xBFFD,
            max_write=o.max_write, time_gran=1, max_pages=o.max_pages,
            map_alignment=(o.map_alignment or 0) if enable & abi.FUSE_MAP_ALIGNMENT else 0,
            flags2=split.flags2)
        log.info("fuse session started", minor=minor, flags=hex(enable),
                 guest_flags=hex(offered), max_write=o.max_write,
                 blksize=o.guest_page_size)
        if minor < 5:
            return out[:abi.FUSE_COMPAT_INIT_OUT_SIZE]
        if minor < 23:
            return out[:abi.FUSE_COMPAT_22_INIT_OUT_SIZE]
        return out

    def _end_session(self, why: str) -> None:
        """Caller holds ``_lifecycle``."""
        if self._session is None:
            return
        self._session = None
        if self.dax is not None:
            # DESTROY: the guest is done with the window; a reset: the front-end dropped it.
            self.dax.reset(unmap=why == "DESTROY")
        try:
            self.fs.destroy()
        except Exception:  # noqa: BLE001
            log.error("file system destroy failed", exc_info=True)
        faults.flush()
        log.info("fuse session ended", why=why)

    def _destroy(self, req, hdr, arglen, session) -> bytes:
        with self._lifecycle:
            self._end_session("DESTROY")
        return b""

    # --- no-reply opcodes -------------------------------------------------------------

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
        """A forgotten inode keeps no DAX mapping (the guest can no longer reach it)."""
        if self.dax is None:
            return
        count = getattr(self.fs, "lookup_count", None)
        for nodeid in nodeids:
            self.dax.forgotten(nodeid, still_known=count is None or count(nodeid) > 0)

    def _interrupt(self, req, hdr, arglen, session):
        # Requests are not cancellable once they reach the file system; the guest copes.
        return NO_REPLY

    # --- attributes ---------------------------------------------------------------------

    def _lookup(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        name = a.name(allow_dots=True)
        a.end()
        return self._entry_out(self.fs.lookup(self._ctx(hdr), hdr.nodeid, name), session)

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
            atime=(_s64(si.atime), si.atimensec)
            if v & abi.FATTR_ATIME and not v & abi.FATTR_ATIME_NOW else None,
            mtime=(_s64(si.mtime), si.mtimensec)
            if v & abi.FATTR_MTIME and not v & abi.FATTR_MTIME_NOW else None,
            ctime=(_s64(si.ctime), si.ctimensec) if v & abi.FATTR_CTIME else None,
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
        stx, timeout = result if isinstance(result, tuple) else (result, self.options.timeout)
        av, avn = _split_time(timeout)
        return abi.fuse_statx_out_head.pack(av, avn, 0, 0, 0) + self.attrs.fuse_statx(stx)

    def _readlink(self, req, hdr, arglen, session) -> bytes:
        return self.fs.readlink(self._ctx(hdr), hdr.nodeid)

    # --- creating and removing names -----------------------------------------------------

    def _symlink(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        name = a.name()
        target = a.cstring()
        if not target:
            raise _err(errno.EINVAL)
        ctx = self._create_ctx(req, hdr, arglen, session, 0, a.rest())
        return self._entry_out(self.fs.symlink(ctx, target, hdr.nodeid, name), session)

    def _mknod(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        mi = a.struct(abi.fuse_mknod_in,
                      size=abi.FUSE_COMPAT_MKNOD_IN_SIZE if session.minor < 12 else None)
        name = a.name()
        ctx = self._create_ctx(req, hdr, arglen, session, mi.umask, a.rest())
        entry = self.fs.mknod(ctx, hdr.nodeid, name, mi.mode, _decode_dev(mi.rdev))
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

    def _do_rename(self, hdr, a: _Args, newdir: int, flags: int) -> bytes:
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

    # --- files --------------------------------------------------------------------------

    def _open(self, req, hdr, arglen, session) -> bytes:
        oi = self._args(req, arglen).struct(abi.fuse_open_in)
        if self.options.readonly and _opens_for_writing(oi.flags):
            raise _err(errno.EROFS)
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
        size = _reply_room(ri.size, session.max_read, req, "READ")
        result = self.fs.read(self._ctx(hdr), hdr.nodeid, ri.fh, ri.offset, size, ri.flags)
        if isinstance(result, FileRange):
            try:
                n = req.out_from_fd(result.fd, _OUT_HDR, min(size, result.size), result.offset)
            finally:
                if result.done is not None:
                    result.done()
            return _Written(n)
        return bytes(result[:size])

    def _write(self, req, hdr, arglen, session) -> bytes:
        in_size = abi.fuse_write_in.size if session.minor >= 9 else abi.FUSE_COMPAT_WRITE_IN_SIZE
        a = self._args(req, min(arglen, in_size))
        wi = a.struct(abi.fuse_write_in, size=in_size)
        if wi.size > arglen - in_size:
            raise _err(errno.EINVAL)
        data = WriteData(req, _HDR + in_size, wi.size)
        n = self.fs.write(self._ctx(hdr), hdr.nodeid, wi.fh, wi.offset, data, wi.flags,
                          bool(wi.write_flags & abi.FUSE_WRITE_KILL_SUIDGID))
        return abi.fuse_write_out.pack(n, 0)

    def _statfs(self, req, hdr, arglen, session) -> bytes:
        st = self.fs.statfs(self._ctx(hdr), hdr.nodeid)
        out = abi.fuse_kstatfs.build(
            blocks=st.blocks, bfree=st.bfree, bavail=st.bavail, files=st.files,
            ffree=st.ffree, bsize=st.bsize, namelen=st.namelen, frsize=st.frsize)
        return out if session.minor >= 4 else out[:abi.FUSE_COMPAT_STATFS_SIZE]

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
        off = self.fs.lseek(self._ctx(hdr), hdr.nodeid, li.fh, _s64(li.offset), li.whence)
        return abi.fuse_lseek_out.pack(off)

    def _copy_file_range(self, req, hdr, arglen, session) -> bytes:
        ci = self._args(req, arglen).struct(abi.fuse_copy_file_range_in)
        n = self.fs.copy_file_range(self._ctx(hdr), hdr.nodeid, ci.fh_in, ci.off_in,
                                    ci.nodeid_out, ci.fh_out, ci.off_out, ci.len, ci.flags)
        return abi.fuse_write_out.pack(min(n, _U32), 0)

    # --- directories --------------------------------------------------------------------

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
        limit = _reply_room(ri.size, session.max_read, req, "READDIRPLUS" if plus else "READDIR")
        ctx = self._ctx(hdr)
        out = bytearray()
        offset = ri.offset
        if plus and self._dirplus is not None:
            records, offset, why = self._dirplus(ctx, hdr.nodeid, ri.fh, offset, limit,
                                                 self.attrs.blksize, self.options.timeout)
            if why != DIRPLUS_PYTHON:
                if not records and why == DIRPLUS_FULL:
                    raise _err(errno.EINVAL)       # not even one entry fits
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
                raise _err(errno.EINVAL)   # not even one entry fits: no silent end-of-dir
            return bytes(out)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def _access(self, req, hdr, arglen, session) -> bytes:
        ai = self._args(req, arglen).struct(abi.fuse_access_in)
        self.fs.access(self._ctx(hdr), hdr.nodeid, ai.mask)
        return b""

    def _syncfs(self, req, hdr, arglen, session) -> bytes:
        self._args(req, arglen).struct(abi.fuse_syncfs_in)
        self.fs.syncfs(self._ctx(hdr), hdr.nodeid)
        return b""

    # --- extended attributes ------------------------------------------------------------

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
            raise _err(errno.EINVAL)
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
            raise _err(errno.EINVAL)
        size = _reply_room(gi.size, XATTR_SIZE_MAX, req, "GETXATTR")
        return _sized(self.fs.getxattr(self._ctx(hdr), hdr.nodeid, name), size)

    def _listxattr(self, req, hdr, arglen, session) -> bytes:
        gi = self._args(req, arglen).struct(abi.fuse_getxattr_in)
        size = _reply_room(gi.size, XATTR_LIST_MAX, req, "LISTXATTR")
        names = self.fs.listxattr(self._ctx(hdr), hdr.nodeid)
        return _sized(b"".join(bytes(n) + b"\0" for n in names), size)

    def _removexattr(self, req, hdr, arglen, session) -> bytes:
        a = self._args(req, arglen)
        name = a.cstring()
        a.end()
        if not name:
            raise _err(errno.EINVAL)
        self.fs.removexattr(self._ctx(hdr), hdr.nodeid, name)
        return b""

    # --- DAX ----------------------------------------------------------------------------

    def _setupmapping(self, req, hdr, arglen, session) -> bytes:
        if self.dax is None:
            raise _err(errno.ENOSYS)
        si = self._args(req, arglen).struct(abi.fuse_setupmapping_in)
        if self.options.readonly and si.flags & abi.FUSE_SETUPMAPPING_FLAG_WRITE:
            raise _err(errno.EROFS)
        self.dax.setupmapping(self._ctx(hdr), hdr.nodeid, si.fh, si.foffset, si.len, si.flags,
                              si.moffset)
        return b""

    def _removemapping(self, req, hdr, arglen, session) -> bytes:
        if self.dax is None:
            raise _err(errno.ENOSYS)
        a = self._args(req, arglen)
        ri = a.struct(abi.fuse_removemapping_in)
        ranges = [tuple(a.struct(abi.fuse_removemapping_one)) for _ in range(ri.count)]
        a.end()
        self.dax.removemapping(self._ctx(hdr), ranges)
        return b""


def _refused(hdr: Any) -> tuple[int, Any, int]:
    """A malformed request: EINVAL, or no reply at all for an opcode that never gets one
    (the guest gave it no room, and waits for none)."""
    if hdr.opcode in _NO_REPLY_OPS:
        return hdr.unique, NO_REPLY, 0
    return hdr.unique, None, errno.EINVAL


def _reply_room(size: int, most: int, req: FuseRequest, what: str) -> int:
    """The reply size a READ-like request asked for, cut to what a reply may carry (``most``,
    e.g. ``max_pages`` pages) and to the writable bytes the request offers.  A size the
    guest claims sizes nothing before this."""
    room = req.out_len - _OUT_HDR
    if room < 0:
        raise _err(errno.EINVAL)
    if size > most:
        faults.report("fuse request asks for more than a reply may carry", op=what,
                      size=size, most=most)
    return min(size, most, room)


def _sized(value: bytes, size: int) -> bytes:
    """The xattr size protocol: size 0 asks for the length, too small is ERANGE."""
    if size == 0:
        return abi.fuse_getxattr_out.pack(len(value), 0)
    if len(value) > size:
        raise _err(errno.ERANGE)
    return value


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _opens_for_writing(flags: int) -> bool:
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)


def _opname(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return str(opcode)


__all__ = ["AttrPacker", "CachePolicy", "DaxHandler", "FUSE_MAX_MINOR", "Server",
           "ServerOptions", "Session"]
