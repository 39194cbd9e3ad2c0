"""Framing and dispatch: one FUSE request in, one reply out, whatever the guest sent.

:meth:`Server.handle` reads ``fuse_in_header``, checks the request against the limits of
its opcode and the session, picks the handler from the one dispatch table
(:meth:`Server.__init__`), and writes the handler's reply -- or ``-errno`` -- into the
request's out area, completing it exactly once.  It never raises: a failing file-system
call becomes ``-errno``, a bug in a file system ``-EIO`` plus a logged error, a malformed
request ``-EINVAL``.

The handlers live by concern in the sibling modules and are mixed into :class:`Server`:
:mod:`.session` (INIT, DESTROY), :mod:`.names` (names, inodes, attributes), :mod:`.files`,
:mod:`.dirs`, :mod:`.xattrs`, :mod:`.dax`; :mod:`.packing` turns attributes into bytes.
"""
from __future__ import annotations

import errno
import itertools
import threading
from typing import Any, Callable

from pyvirtiofsd import logs

from pyvirtiofsd.filesystem import FileSystem
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.fuse.request import FuseRequest
from pyvirtiofsd.guestfaults import faults
from pyvirtiofsd.opslog import OpsRecorder

from .dax import DaxHandler, DaxHandlers
from .dirs import DirHandlers
from .files import FileHandlers
from .names import NameHandlers
from .options import ServerOptions
from .packing import AttrPacker
from .session import Session, SessionHandlers
from .wire import IN_HDR, NO_REPLY, OUT_HDR, Written
from .xattrs import XattrHandlers

log = logs.get_logger()

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

_XATTR_OPS = frozenset({
    Opcode.FUSE_GETXATTR, Opcode.FUSE_SETXATTR, Opcode.FUSE_LISTXATTR, Opcode.FUSE_REMOVEXATTR,
})


ANY_SESSION: Any = object()
"""For :meth:`Server.handle`: serve the request in whatever session is current."""


class Server(SessionHandlers, NameHandlers, FileHandlers, DirHandlers, XattrHandlers,
             DaxHandlers):
    """Serve ``fs`` to one guest.  See the module docstring.

    ``dax``: the SETUPMAPPING/REMOVEMAPPING handler the device provides when it has a DAX
    window; ``None`` answers both with ENOSYS.
    ``ops``: an :class:`~pyvirtiofsd.opslog.OpsRecorder` that sees every request (ops log,
    statistics); ``None`` costs one test per request.

    Thread safety: ``handle`` may run concurrently on many threads.  Per-session state is
    an immutable :class:`~.session.Session` swapped atomically by INIT/DESTROY.
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
                                dax_policy=dax.inode_dax if dax is not None else None,
                                uid_map=self.options.uid_map, gid_map=self.options.gid_map)
        # READDIRPLUS records packed by the file system itself (PassthroughFs: in C) -- only
        # where it offers them (overrides FileSystem.readdirplus_records) and AttrPacker
        # adds nothing to the host's attributes.
        plain = (self.attrs.dax_policy is None and not self.options.uid_map
                 and not self.options.gid_map)
        packs = type(fs).readdirplus_records is not FileSystem.readdirplus_records
        self._dirplus = fs.readdirplus_records if plain and packs else None
        self._session: Session | None = None
        self._numbers = itertools.count(1)      # Session.number
        # What bounds a request before INIT (only INIT itself is served then).
        self._no_session = Session(0, 0, self.options.max_write, self.options.max_read)
        self._lifecycle = threading.Lock()
        # Requests being served in the current session: ending it waits for them, so the
        # file system forgets its inodes and handles only once none of them can still add
        # one (a CREATE racing DESTROY would otherwise leave its fds to the next session).
        self._serving = 0
        self._idle = threading.Condition()
        self.session_changed = None
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

    def handle(self, req: FuseRequest, arrived_in: Any = ANY_SESSION) -> None:
        """Serve one request and complete it exactly once.  Never raises.

        ``arrived_in``: the :attr:`session_number` current when the transport took the request
        (it may wait for a worker meanwhile); if another session is current by the time it
        is served, it fails with EIO instead of acting in a session it was not sent in.
        :data:`ANY_SESSION` (the default): served in whichever is current."""
        if self.ops is not None:   # ops log / statistics: the request records its completion
            req = self.ops.wrap(req)
        unique = 0
        try:
            unique, result, error = self._dispatch(req, arrived_in)
        except Exception:  # noqa: BLE001 - last line of defence: the guest must get an answer
            log.error("fuse request handling failed", exc_info=True)
            result, error = None, errno.EIO
        try:
            self._finish(req, unique, result, error)
        except Exception:  # noqa: BLE001 - a transport whose complete() fails: nothing to do
            log.error("completing fuse request failed", unique=unique, exc_info=True)

    # --- framing --------------------------------------------------------------------------

    def _dispatch(self, req: FuseRequest, arrived_in: Any) -> tuple[int, Any, int]:
        try:
            head = req.read_in(0, IN_HDR)
        except OSError:
            # EFAULT: the guest pointed the request outside its memory.  The transport that
            # popped it has said so already (one line per condition, see guestfaults).
            return 0, None, errno.EFAULT
        if len(head) < IN_HDR:
            unique = int.from_bytes(head[8:16], "little") if len(head) >= 16 else 0
            faults.report("fuse request shorter than fuse_in_header", in_len=req.in_len)
            return unique, None, errno.EINVAL
        hdr = abi.fuse_in_header.parse(head)
        ext = hdr.total_extlen * 8
        if hdr.len < IN_HDR or hdr.len > req.in_len or ext > hdr.len - IN_HDR:
            faults.report("fuse request length mismatch", opcode=_opname(hdr.opcode),
                          len=hdr.len, in_len=req.in_len, total_extlen=hdr.total_extlen)
            return _refused(hdr)
        session = self._session
        limit = (session or self._no_session).request_limit(hdr.opcode)
        if hdr.len - IN_HDR > limit:
            faults.report("fuse request longer than its opcode allows", opcode=_opname(hdr.opcode),
                          len=hdr.len, limit=IN_HDR + limit)
            return _refused(hdr)
        arglen = hdr.len - IN_HDR - ext   # extensions (none negotiated) are not arguments

        if hdr.opcode == Opcode.FUSE_INIT:
            return hdr.unique, *self._run(self._init, req, hdr, arglen)
        if hdr.opcode == Opcode.FUSE_DESTROY:
            # not counted as serving: it is what waits for the others
            if session is None:
                return hdr.unique, None, errno.EIO
            return hdr.unique, *self._run(self._destroy, req, hdr, arglen, session)
        session = self._enter()
        if session is not None and arrived_in is not ANY_SESSION and arrived_in != session.number:
            self._leave()
            session = None          # sent before the session now current began
        if session is None:
            if hdr.opcode in _NO_REPLY_OPS:
                return hdr.unique, NO_REPLY, 0
            return hdr.unique, None, errno.EIO
        try:
            return self._serve_in(session, req, hdr, arglen)
        finally:
            self._leave()

    def _enter(self) -> Session | None:
        """The current session, counting this request as served in it (None: none)."""
        with self._idle:
            session = self._session
            if session is not None:
                self._serving += 1
            return session

    def _leave(self) -> None:
        with self._idle:
            self._serving -= 1
            if not self._serving:
                self._idle.notify_all()

    def _serve_in(self, session: Session, req: FuseRequest, hdr: Any,
                  arglen: int) -> tuple[int, Any, int]:
        handler = self._handlers.get(hdr.opcode)
        if handler is None:
            return hdr.unique, None, errno.ENOSYS
        if self.options.readonly and hdr.opcode in _MODIFYING:
            return hdr.unique, None, errno.EROFS
        if not self.options.xattr and hdr.opcode in _XATTR_OPS:
            return hdr.unique, None, errno.ENOSYS

        result, error = self._run(handler, req, hdr, arglen, session)
        if error and hdr.opcode in _NO_REPLY_OPS:
            # No reply to carry the error (the guest gave no room and waits for none).
            faults.report("request without a reply failed", opcode=_opname(hdr.opcode),
                          error=errno.errorcode.get(error, error))
            return hdr.unique, NO_REPLY, 0
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
                req.write_out(0, abi.fuse_out_header.pack(OUT_HDR, -error, unique))
                used = OUT_HDR
            else:
                if isinstance(result, Written):
                    size = result.size
                else:
                    body = bytes(result or b"")
                    size = len(body)
                    if OUT_HDR + size > req.out_len:
                        faults.report("fuse reply does not fit the out area",
                                      reply=OUT_HDR + size, out_len=req.out_len)
                        req.write_out(0, abi.fuse_out_header.pack(OUT_HDR, -errno.EIO, unique))
                        req.complete(OUT_HDR)
                        return
                    if body:
                        req.write_out(OUT_HDR, body)
                req.write_out(0, abi.fuse_out_header.pack(OUT_HDR + size, 0, unique))
                used = OUT_HDR + size
        except (OSError, ValueError) as e:  # an out area too small for the header, or unmapped
            faults.report("cannot write fuse reply", out_len=req.out_len, error=str(e))
            used = 0
        req.complete(used)

    interrupted: Callable[[int], bool] | None = None
    """Set by the transport: ``interrupted(unique)`` cancels that request if it has not
    started yet (answering it EINTR through :meth:`cancel`) and says whether it did."""

    def _interrupt(self, req, hdr, arglen, session):
        # A request still waiting for a worker is cancelled; one the file system is serving
        # runs to its end (a syscall cannot be taken back), and the guest waits for it.
        ii = self._args(req, arglen).struct(abi.fuse_interrupt_in)
        if self.interrupted is not None:
            self.interrupted(ii.unique)
        return NO_REPLY

    def cancel(self, req: FuseRequest, unique: int) -> None:
        """Answer a request that was never served: EINTR (FUSE_INTERRUPT came first)."""
        if self.ops is not None:
            req = self.ops.wrap(req)
        self._finish(req, unique, None, errno.EINTR)


def _refused(hdr: Any) -> tuple[int, Any, int]:
    """A malformed request: EINVAL, or no reply at all for an opcode that never gets one
    (the guest gave it no room, and waits for none)."""
    if hdr.opcode in _NO_REPLY_OPS:
        return hdr.unique, NO_REPLY, 0
    return hdr.unique, None, errno.EINVAL


def _opname(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return str(opcode)
