"""The FUSE session: INIT negotiation, DESTROY, and what a session fixes.

A :class:`Session` is what INIT negotiated, immutable and swapped whole under the
server's ``_lifecycle`` lock by INIT, DESTROY and :meth:`SessionHandlers.reset`; requests
served concurrently each see one session or the other, never a mix.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from pyvirtiofsd import logs

from pyvirtiofsd.filesystem import FileSystem
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.fuse.request import FuseRequest
from pyvirtiofsd.guestfaults import faults

from .base import HandlerBase
from .wire import ARGS_MAX, err

# How long ending a session waits for the requests still being served (a hung host file
# system must not keep DESTROY, or a reset, waiting for ever).
END_WAIT = 10.0

log = logs.get_logger()

FUSE_MAX_MINOR = 39
"""The newest protocol minor this server speaks.

7.39 is the newest minor whose additions we implement (FUSE_STATX).  Everything 7.40-7.45
add is either opt-in through INIT flags we do not offer (PASSTHROUGH and its
``backing_id``/``max_stack_depth``, HAS_RESEND, ALLOW_IDMAP, OVER_IO_URING,
REQUEST_TIMEOUT) or a new opcode we would answer ENOSYS (COPY_FILE_RANGE_64); claiming a
minor we have not read would promise semantics we never checked.  ``fuse_init_out`` is the
same 64 bytes for every minor from 7.23, so nothing else changes with the choice."""

ACL_FLAGS = abi.FUSE_POSIX_ACL | abi.FUSE_DONT_MASK | abi.FUSE_SETXATTR_EXT


@dataclass(frozen=True)
class Session:
    """What INIT negotiated; replaced whole, never mutated."""

    minor: int
    flags: int
    max_write: int
    max_read: int
    """``max_pages`` x guest page size: the most a READ or READDIR reply may carry."""
    number: int = 0
    """Which session of this server it is (1, 2, ...): what a transport notes when it
    takes a request (:meth:`Server.handle`'s ``arrived_in``); 0: no session."""

    def request_limit(self, opcode: int) -> int:
        """The most argument bytes a request of ``opcode`` may claim (see ARGS_MAX)."""
        if opcode == Opcode.FUSE_WRITE:
            return abi.fuse_write_in.size + self.max_write
        return ARGS_MAX


class SessionHandlers(HandlerBase):
    """INIT, DESTROY and a device reset.  Mixed into :class:`~pyvirtiofsd.server.Server`."""

    @property
    def session(self) -> Session | None:
        """The negotiated session, or ``None`` before INIT / after DESTROY."""
        return self._session

    @property
    def session_number(self) -> int:
        """The current session's :attr:`Session.number`, 0 if there is none."""
        s = self._session
        return 0 if s is None else s.number

    def reset(self) -> None:
        """End the session as DESTROY would (device reset, guest gone)."""
        with self._lifecycle:
            self._end_session("reset")

    def restore_session(self, minor: int, flags: int, max_write: int, max_read: int) -> Session:
        """Migration: take over the session another daemon negotiated with this guest, as
        if INIT had just negotiated it here.  Refused (ValueError) when this server could
        not have negotiated it: an unknown minor, flags it would not enable, other limits
        (the destination must run with the options the source ran with)."""
        o = self.options
        if not 1 <= minor <= FUSE_MAX_MINOR:
            raise ValueError(f"session minor {minor} is not one this server speaks")
        if flags & ~self._wanted_flags():
            raise ValueError(f"session flags {flags & ~self._wanted_flags():#x} are not ones "
                             "this daemon enables (different options from the source?)")
        if (max_write, max_read) != (o.max_write, o.max_read):
            raise ValueError(f"session limits max_write={max_write} max_read={max_read} differ "
                             f"from this daemon's ({o.max_write}, {o.max_read})")
        with self._lifecycle:
            if self._session is not None:
                self._end_session("migration")
            kept = self.fs.init(flags)
            if kept is not None and flags & ~kept:
                raise ValueError(f"the file system refuses session flags {flags & ~kept:#x}")
            session = Session(minor=minor, flags=flags, max_write=max_write,
                              max_read=max_read, number=next(self._numbers))
            self._session = session
            if self.session_changed is not None:
                self.session_changed(session)
        log.info("fuse session restored from migration", minor=minor, flags=hex(flags))
        return session

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
            want |= ACL_FLAGS
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
            want |= self.dax.init_flags
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
            raise err(errno.EPROTO)

        minor = min(ii.minor, FUSE_MAX_MINOR)
        offered = ii.flags
        if ii.flags & abi.FUSE_INIT_EXT:
            offered |= ii.flags2 << 32
        enable = offered & self._wanted_flags()
        o = self.options
        # "always": a guest that cannot do it must not mount without it (virtiofsd's rule)
        if o.posix_acl == "always" and enable & ACL_FLAGS != ACL_FLAGS:
            log.error("fuse init: --posix-acl=always but the guest cannot do POSIX ACLs",
                      guest_flags=hex(offered))
            raise err(errno.EPROTO)
        if o.security_label == "always" and not enable & abi.FUSE_SECURITY_CTX:
            log.error("fuse init: --security-label=always but the guest sends no security "
                      "contexts", guest_flags=hex(offered))
            raise err(errno.EPROTO)
        if enable & abi.FUSE_POSIX_ACL and enable & ACL_FLAGS != ACL_FLAGS:
            enable &= ~ACL_FLAGS    # auto: ACLs only with DONT_MASK and SETXATTR_EXT too
        with self._lifecycle:
            if self._session is not None:
                # A guest that rebooted without DESTROY mounts again: start afresh.
                self._end_session("new INIT")
            kept = self.fs.init(enable)
            if kept is not None:        # a file system that forgot to return keeps all
                enable &= kept
            session = Session(minor=minor, flags=enable, max_write=o.max_write,
                              max_read=o.max_read, number=next(self._numbers))
            self._session = session
            if self.session_changed is not None:
                self.session_changed(session)     # before the guest sees the INIT reply
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
        with self._idle:
            self._session = None                  # new requests get EIO from here on
        if self.session_changed is not None:
            self.session_changed(None)            # nothing is served in C from here on
        with self._idle:                          # nor in Python, once these are done
            if not self._idle.wait_for(lambda: self._serving == 0, timeout=END_WAIT):
                log.warning("ending the session with requests still being served",
                            requests=self._serving, waited_s=END_WAIT)
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
