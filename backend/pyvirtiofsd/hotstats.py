"""Statistics and ops-log records of the requests the C path serves (cext/opstats.h).

With ``--stats``/``--ops-log`` the Python server records what it serves through
:class:`~pyvirtiofsd.opslog.OpsRecorder`; the C path stays on and records what it serves
itself, per serving thread.  :class:`HotRecording` joins the two:

* its :meth:`~HotRecording.snapshot` is a source of the recorder's
  :class:`~pyvirtiofsd.stats.Stats` (:meth:`Stats.add_source`), so
  :meth:`Stats.snapshot` has every request, wherever it was served;
* with an ops log, a thread drains C's rings of fixed-size records into the same file, in
  the same format (:func:`pyvirtiofsd.opslog.json_line`'s; C formats the lines, with the
  opcode names it is given from here).  C never waits for it: a record that finds its
  ring full is dropped, and counted here into ``Stats.dropped_records`` and a logged
  ``ops log dropped N records``.

Records reach the file in batches, each in time order (C merges its rings by time).
Python writes its records as they come, C's follow within ``_Drain.INTERVAL``: the file is
not in time order across the two (each line carries its completion time; sort by it).
Imported only when an option asks for recording.  ``PYVIRTIOFSD_OPSLOG_RING=N`` sets the
records per ring (tests).
"""
from __future__ import annotations

import os
import threading
import time

from pyvirtiofsd import logs

from ._cext import ffi, lib
from .opslog import OpsRecorder, opname
from .stats import LatencyHistogram, OpStats

log = logs.get_logger("pyvirtiofsd.ops")

RING_RECORDS = 16384
"""Records per serving thread's ring: at 170k requests/s a drain every 10 ms finds ~2k."""

_OPLINE_BATCH = 1 << 20   # bytes of lines per drain: some 5000 records


class HotRecording:
    """Recording for a C serving context ``ctx`` into ``recorder``'s statistics and file."""

    def __init__(self, ctx, recorder: OpsRecorder):
        self.recorder = recorder
        ring = 0
        if recorder.stream is not None:
            ring = int(os.environ.get("PYVIRTIOFSD_OPSLOG_RING", RING_RECORDS))
        st = lib.pvfs_opstats_new(max(0, ring))
        if st == ffi.NULL:
            raise MemoryError("cannot allocate the C path's statistics")
        self.st = ffi.gc(st, lib.pvfs_opstats_unref)
        self._op = ffi.new("struct pvfs_opstats_op *")
        self._read_lock = threading.Lock()      # self._op is one buffer
        self.drain = _Drain(self.st, recorder) if ring > 0 else None
        for opcode in range(lib.PVFS_OPSTATS_OPCODES):
            lib.pvfs_opstats_set_opname(self.st, opcode, opname(opcode).encode())
        lib.pvfs_hot_set_opstats(ctx, self.st)
        if recorder.stats is not None:
            recorder.stats.add_source(self.snapshot)
        if self.drain is not None:
            recorder.add_feeder(self.drain.stop)
            self.drain.start()

    def snapshot(self) -> dict[str, OpStats]:
        """What C has served so far, per opcode (cumulative)."""
        out: dict[str, OpStats] = {}
        with self._read_lock:
            o = self._op
            for opcode in range(lib.PVFS_OPSTATS_OPCODES):
                lib.pvfs_opstats_read(self.st, opcode, o)
                if not o.count:
                    continue
                h = LatencyHistogram()
                h.counts = {b: c for b, c in enumerate(ffi.unpack(o.hist, lib.PVFS_OPSTATS_BUCKETS))
                            if c}
                h.n = sum(h.counts.values())
                h.max = o.max_us
                out[opname(opcode)] = OpStats(o.count, o.errors, o.bytes, h)
        return out

    def flush(self) -> None:
        """Write every record C has made so far (the queues are stopped: a reset)."""
        if self.drain is not None:
            self.drain.drain_all()


class _Drain(threading.Thread):
    """Moves C's records into the ops log every ``INTERVAL`` s (at once again while there
    are many), and accounts for the records C dropped."""

    INTERVAL = 0.01
    BUSY = 1024         # records: a drain that moved this many goes again at once
    LOG_EVERY = 1.0     # at most one "dropped" line a second

    def __init__(self, st, recorder: OpsRecorder):
        super().__init__(name="ops-log-drain", daemon=True)
        self.st = st
        self.recorder = recorder
        self._buf = ffi.new("char[]", _OPLINE_BATCH)
        self._records = ffi.new("uint32_t *")
        self._lock = threading.Lock()       # one drain at a time (the thread, a flush)
        self._wake = threading.Event()      # a futex wait: allowed by the seccomp filter
        self._stopping = False
        self._dropped = 0       # as C counted them when last looked at
        self._unlogged = 0      # dropped but not said yet
        self._logged_at = 0.0

    def run(self) -> None:
        while not self._stopping:
            try:
                busy = self.drain_once() >= self.BUSY
            except Exception:  # noqa: BLE001 - a bug here must not end the ops log
                log.error("cannot drain the C path's ops-log records", exc_info=True)
                busy = False
            if not busy:
                self._wake.wait(self.INTERVAL)

    def stop(self) -> None:
        """Stop the thread and write what is left."""
        self._stopping = True
        self._wake.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5)
        self.drain_all()

    def drain_all(self) -> None:
        while self.drain_once():
            pass
        with self._lock:
            self._say_dropped(force=True)

    def drain_once(self) -> int:
        with self._lock:
            size = lib.pvfs_opstats_drain(self.st, self._buf, _OPLINE_BATCH,
                                          time.time_ns() - time.monotonic_ns(), self._records)
            if size:
                self.recorder.write(ffi.unpack(self._buf, size).decode("ascii"))
            self._count_dropped()
            self._say_dropped()
        return self._records[0] if size else 0

    def _count_dropped(self) -> None:
        dropped = lib.pvfs_opstats_dropped(self.st)
        if dropped > self._dropped:
            new, self._dropped = dropped - self._dropped, dropped
            self._unlogged += new
            if self.recorder.stats is not None:
                self.recorder.stats.dropped_records += new

    def _say_dropped(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._unlogged and (force or now - self._logged_at >= self.LOG_EVERY):
            log.warning(f"ops log dropped {self._unlogged} records", dropped=self._unlogged,
                        path=self.recorder.path)
            self._unlogged, self._logged_at = 0, now


__all__ = ["HotRecording", "RING_RECORDS"]
