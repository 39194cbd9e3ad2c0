"""The ops log: one record per FUSE request the server completes.

``Server(fs, options, ops=OpsRecorder(...))`` makes :meth:`Server.handle` wrap every request
in a :class:`RecordedRequest` before serving it; with ``ops=None`` (the default) the cost is
one ``is None`` test per request.  The record is made when the server completes the request
and goes to any of three places:

* an ops-log file (``--ops-log FILE``): one JSON object per line, e.g.
  ``{"time": 1764071420.512345, "opcode": "READ", "unique": 12, "nodeid": 5, "fh": 3,
  "offset": 0, "size": 131072, "bytes": 131072, "errno": 0, "us": 84}``
  -- ``time`` is the completion time (Unix seconds), ``fh``/``offset``/``size`` appear only
  for the opcodes that carry them, ``bytes`` is data moved (READ, READDIR[PLUS]: reply
  payload; WRITE, COPY_FILE_RANGE: bytes the server reported written; 0 otherwise),
  ``errno`` is 0 on success, ``us`` the time from :meth:`Server.handle` until the reply
  is ready to go back (the record is made just before it goes);
* :class:`pyvirtiofsd.stats.Stats` (``--stats``, ``--stats-interval``, SIGUSR1);
* structlog ``fuse op`` events (``ServerOptions(ops_log=True)``; debugging aid).

Everything in a record comes from the request itself -- its in area (``fuse_in_header`` and
the opcode's argument struct) and what was written to its out area (``fuse_out_header``,
``fuse_open_out``, ``fuse_write_out``) -- never from the server's internals.  Any code
that serves a request through the :class:`~pyvirtiofsd.fuse.request.FuseRequest`
interface is recorded alike; a fast path that serves requests without that interface must
record them itself: the C path does (cext/opstats.h, drained by :mod:`pyvirtiofsd.hotstats`
into the same file with :func:`json_line`, and counted into the same :class:`Stats`).
"""
from __future__ import annotations

import threading
import time
from typing import IO, Any, Callable

from pyvirtiofsd import logs

from .fuse import abi
from .fuse.abi import Opcode
from .stats import Stats

log = logs.get_logger("pyvirtiofsd.ops")

_HDR = abi.fuse_in_header.size          # 40
_OUT_HDR = abi.fuse_out_header.size     # 16
_ARGS_PEEK = 40                          # enough for every argument struct read below

OPNAMES: dict[int, str] = {op.value: op.name.removeprefix("FUSE_") for op in Opcode}
"""Opcode number → the name used in records (``READ``, ``LOOKUP``...)."""


def opname(opcode: int) -> str:
    return OPNAMES.get(opcode) or f"OPCODE_{opcode}"


def _plain(ws: abi.WireStruct, fh: str | None, offset: str | None, size: str | None):
    """An argument decoder: the named fields of ``ws`` (or None) as (fh, offset, size)."""
    idx = [ws.fields.index(n) if n else None for n in (fh, offset, size)]

    def decode(args: bytes):
        if len(args) < ws.size:
            return None, None, None
        v = ws.unpack_from(args)
        return tuple(None if i is None else v[i] for i in idx)
    return decode


def _getattr(args: bytes):
    if len(args) < abi.fuse_getattr_in.size:
        return None, None, None
    gi = abi.fuse_getattr_in.parse(args)
    return (gi.fh if gi.getattr_flags & abi.FUSE_GETATTR_FH else None), None, None


def _setattr(args: bytes):
    if len(args) < 24:
        return None, None, None
    valid, _pad, fh, size = abi.fuse_setattr_in.unpack_from(args.ljust(abi.fuse_setattr_in.size,
                                                                        b"\0"))[:4]
    return (fh if valid & abi.FATTR_FH else None), None, (size if valid & abi.FATTR_SIZE else None)


_ARGS: dict[int, Callable[[bytes], tuple]] = {
    Opcode.FUSE_READ: _plain(abi.fuse_read_in, "fh", "offset", "size"),
    Opcode.FUSE_READDIR: _plain(abi.fuse_read_in, "fh", "offset", "size"),
    Opcode.FUSE_READDIRPLUS: _plain(abi.fuse_read_in, "fh", "offset", "size"),
    Opcode.FUSE_WRITE: _plain(abi.fuse_write_in, "fh", "offset", "size"),
    Opcode.FUSE_RELEASE: _plain(abi.fuse_release_in, "fh", None, None),
    Opcode.FUSE_RELEASEDIR: _plain(abi.fuse_release_in, "fh", None, None),
    Opcode.FUSE_FLUSH: _plain(abi.fuse_flush_in, "fh", None, None),
    Opcode.FUSE_FSYNC: _plain(abi.fuse_fsync_in, "fh", None, None),
    Opcode.FUSE_FSYNCDIR: _plain(abi.fuse_fsync_in, "fh", None, None),
    Opcode.FUSE_FALLOCATE: _plain(abi.fuse_fallocate_in, "fh", "offset", "length"),
    Opcode.FUSE_LSEEK: _plain(abi.fuse_lseek_in, "fh", "offset", None),
    Opcode.FUSE_COPY_FILE_RANGE: _plain(abi.fuse_copy_file_range_in, "fh_in", "off_in", "len"),
    Opcode.FUSE_SETUPMAPPING: _plain(abi.fuse_setupmapping_in, "fh", "foffset", "len"),
    Opcode.FUSE_GETATTR: _getattr,
    Opcode.FUSE_SETATTR: _setattr,
}
# Opcodes whose handle is in the reply: fuse_open_out ends the reply body.
_FH_IN_REPLY = frozenset({Opcode.FUSE_OPEN, Opcode.FUSE_OPENDIR, Opcode.FUSE_CREATE,
                          Opcode.FUSE_TMPFILE})
# Data moved = the reply payload.
_BYTES_OUT = frozenset({Opcode.FUSE_READ, Opcode.FUSE_READDIR, Opcode.FUSE_READDIRPLUS})
# Data moved = fuse_write_out.size.
_BYTES_WRITTEN = frozenset({Opcode.FUSE_WRITE, Opcode.FUSE_COPY_FILE_RANGE})


class OpRecord:
    """One completed request, as the ops log and the statistics see it."""

    __slots__ = ("time", "opcode", "unique", "nodeid", "fh", "offset", "size", "bytes",
                 "errno", "us")

    def __init__(self, time: float, opcode: int, unique: int, nodeid: int, fh: int | None,
                 offset: int | None, size: int | None, nbytes: int, errno: int, us: int):
        self.time, self.opcode, self.unique, self.nodeid = time, opcode, unique, nodeid
        self.fh, self.offset, self.size = fh, offset, size
        self.bytes, self.errno, self.us = nbytes, errno, us

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"time": round(self.time, 6), "opcode": opname(self.opcode),
                             "unique": self.unique, "nodeid": self.nodeid}
        for key in ("fh", "offset", "size"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        d.update(bytes=self.bytes, errno=self.errno, us=self.us)
        return d

    def json(self) -> str:
        """The record as one line of JSON (:func:`json_line`)."""
        return json_line(self.time, self.opcode, self.unique, self.nodeid, self.fh,
                         self.offset, self.size, self.bytes, self.errno, self.us)


def json_line(time: float, opcode: int, unique: int, nodeid: int, fh: int | None,
              offset: int | None, size: int | None, nbytes: int, errno: int, us: int) -> str:
    """A record as one line of JSON (no newline), formatted by hand: every value is a number
    or an opcode name (no escaping needed), and it is much cheaper than ``json.dumps``.
    The one formatter of both kinds of record: Python's (:class:`OpRecord`) and those the C
    path makes (:mod:`pyvirtiofsd.hotstats`)."""
    out = (f'{{"time": {time:.6f}, "opcode": "{opname(opcode)}", '
           f'"unique": {unique}, "nodeid": {nodeid}')
    if fh is not None:
        out += f', "fh": {fh}'
    if offset is not None:
        out += f', "offset": {offset}'
    if size is not None:
        out += f', "size": {size}'
    return out + f', "bytes": {nbytes}, "errno": {errno}, "us": {us}}}'


class RecordedRequest:
    """A :class:`FuseRequest` that records itself when the server completes it.

    Delegates every call to the transport's request; notes the reply's status from the
    ``fuse_out_header`` the server writes and the head of the reply body.  Attributes it
    does not know are looked up on the wrapped request.
    """

    __slots__ = ("_req", "_recorder", "_t0", "_status", "_body")

    def __init__(self, req: Any, recorder: OpsRecorder):
        self._req = req
        self._recorder = recorder
        self._t0 = time.perf_counter_ns()
        self._status = 0
        self._body = b""

    @property
    def in_len(self) -> int:
        return self._req.in_len

    @property
    def out_len(self) -> int:
        return self._req.out_len

    def read_in(self, offset: int, size: int) -> bytes:
        return self._req.read_in(offset, size)

    def write_out(self, offset: int, data: bytes) -> None:
        self._req.write_out(offset, data)
        if offset == 0 and len(data) >= _OUT_HDR:
            self._status = -abi.fuse_out_header.unpack_from(data)[1]
        elif offset == _OUT_HDR:
            self._body = data

    def out_from_fd(self, fd: int, out_offset: int, size: int, file_offset: int) -> int:
        return self._req.out_from_fd(fd, out_offset, size, file_offset)

    def in_to_fd(self, fd: int, in_offset: int, size: int, file_offset: int) -> int:
        return self._req.in_to_fd(fd, in_offset, size, file_offset)

    def complete(self, used_len: int) -> None:
        # Record first, then hand the reply back: the in area is still ours to read (once
        # completed it belongs to the driver again), and whatever the guest has seen is
        # already in the ops log and the statistics -- its next request is recorded after.
        try:
            rec = self._record(used_len)
            if rec is not None:
                self._recorder.record(rec)
        except Exception:  # noqa: BLE001 - recording must never cost the guest its reply
            log.warning("cannot record fuse op", exc_info=True)
        self._req.complete(used_len)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._req, name)

    def _record(self, used_len: int) -> OpRecord | None:
        us = (time.perf_counter_ns() - self._t0) // 1000
        req = self._req
        if req.in_len < _HDR:
            return None
        hdr = abi.fuse_in_header.unpack_from(req.read_in(0, _HDR))
        opcode, unique, nodeid = hdr[1], hdr[2], hdr[3]
        fh = offset = size = None
        decode = _ARGS.get(opcode)
        if decode is not None:
            fh, offset, size = decode(req.read_in(_HDR, min(_ARGS_PEEK, req.in_len - _HDR)))
        status = self._status
        nbytes = 0
        if not status:
            if opcode in _BYTES_OUT:
                nbytes = max(0, used_len - _OUT_HDR)
            elif opcode in _BYTES_WRITTEN and len(self._body) >= abi.fuse_write_out.size:
                nbytes = abi.fuse_write_out.unpack_from(self._body)[0]
            elif opcode in _FH_IN_REPLY and len(self._body) >= abi.fuse_open_out.size:
                fh = abi.fuse_open_out.unpack_from(self._body,
                                                   len(self._body) - abi.fuse_open_out.size)[0]
        return OpRecord(time.time(), opcode, unique, nodeid, fh, offset, size, nbytes, status, us)


class OpsRecorder:
    """Where records go: an ops-log stream, statistics, structlog events (any combination).

    ``stream``: a text stream written one JSON line per record (use :meth:`open` for a
    file).  ``stats``: a :class:`~pyvirtiofsd.stats.Stats` to feed.  ``events``: log each
    record as a structlog ``fuse op`` event.
    """

    def __init__(self, stream: IO[str] | None = None, *, stats: Stats | None = None,
                 events: bool = False, path: str | None = None):
        self.stream = stream
        self.stats = stats
        self.events = events
        self.path = path
        self._lock = threading.Lock()
        self._failed = False
        self._feeders: list[Callable[[], None]] = []

    @classmethod
    def open(cls, path: str, *, stats: Stats | None = None) -> OpsRecorder:
        """Append to the ops log at ``path`` (line-buffered: ``tail -f`` sees each op).

        UTF-8 (records are ASCII anyway) because its codec is always loaded: inside the
        sandbox the standard library may no longer be importable."""
        return cls(open(path, "a", buffering=1, encoding="utf-8"), stats=stats, path=path)

    def wrap(self, req: Any) -> RecordedRequest:
        return RecordedRequest(req, self)

    def record(self, rec: OpRecord) -> None:
        if self.stats is not None:
            self.stats.add(opname(rec.opcode), rec.errno, rec.bytes, rec.us)
        if self.stream is not None:
            self.write(rec.json() + "\n")
        if self.events:
            log.info("fuse op", **rec.as_dict())

    def write(self, lines: str) -> None:
        """Append whole lines (each ending in a newline) to the ops log, if there is one."""
        with self._lock:
            if self.stream is None:
                return
            try:
                self.stream.write(lines)
            except (OSError, ValueError) as e:
                if not self._failed:      # e.g. disk full: say so once, keep serving
                    self._failed = True
                    log.error("cannot write the ops log", path=self.path, error=str(e))

    def add_feeder(self, stop: Callable[[], None]) -> None:
        """Something else writes records here (the C path's drain, :mod:`.hotstats`):
        ``stop()`` is called at :meth:`close`, before the stream closes, to write its last."""
        self._feeders.append(stop)

    def close(self) -> None:
        for stop in self._feeders:
            try:
                stop()
            except Exception:  # noqa: BLE001 - the log must still be closed
                log.error("cannot write the last ops-log records", exc_info=True)
        self._feeders = []
        with self._lock:
            stream, self.stream = self.stream, None
        if stream is not None and self.path is not None:
            stream.close()


__all__ = ["OPNAMES", "OpRecord", "OpsRecorder", "RecordedRequest", "json_line", "opname"]
