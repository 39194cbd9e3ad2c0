"""Per-opcode statistics: how many requests, how many failed, bytes moved, latency percentiles.

Fed by :class:`pyvirtiofsd.opslog.OpsRecorder` (one :meth:`Stats.add` per completed FUSE
request) and reported as a structlog event named ``fuse stats``:

* every ``--stats-interval`` seconds, for the requests of that interval (``scope="interval"``);
* on SIGUSR1 and when the daemon stops, for everything since start (``scope="total"``).

Latencies go into a :class:`LatencyHistogram` rather than a list, so memory stays bounded
however long the daemon runs, and two snapshots subtract into the histogram of the
interval between them.  Percentiles are then exact below 32 µs and within about 3 % above.

Requests the C path serves are counted in C (cext/opstats.h) in the same buckets, and
merged in by a source the hot path registers (:meth:`Stats.add_source`): callers read
:meth:`Stats.snapshot` and :attr:`Stats.dropped_records` alone, whoever served what.

Collecting costs a lock and a few dict updates per request served in Python (a few
counters in C): statistics are off unless asked for (``--stats``, ``--stats-interval``,
``--ops-log``).
"""
from __future__ import annotations

import threading
import time
from typing import Callable
from dataclasses import dataclass, field

from pyvirtiofsd import logs

log = logs.get_logger("pyvirtiofsd.stats")

_EXACT = 32          # below this many µs every value has its own bucket
_SUB_BITS = 4        # above it, 2**_SUB_BITS buckets per power of two


def bucket_of(us: int) -> int:
    """The histogram bucket of a latency in µs (monotonic in ``us``)."""
    if us < _EXACT:
        return max(us, 0)
    shift = us.bit_length() - (_SUB_BITS + 1)
    return (shift << _SUB_BITS) + (us >> shift)


def bucket_value(index: int) -> int:
    """The latency a bucket stands for: the middle of the values it holds."""
    if index < _EXACT:
        return index
    shift = (index >> _SUB_BITS) - 1
    mantissa = index - (shift << _SUB_BITS)
    return (mantissa << shift) + ((1 << shift) >> 1)


class LatencyHistogram:
    """Counts of latencies (µs) per log-linear bucket; additive, so snapshots subtract."""

    __slots__ = ("counts", "n", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max = 0

    def add(self, us: int) -> None:
        b = bucket_of(us)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        if us > self.max:
            self.max = us

    def copy(self) -> LatencyHistogram:
        h = LatencyHistogram()
        h.counts = dict(self.counts)
        h.n, h.max = self.n, self.max
        return h

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s latencies to this histogram."""
        for b, c in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + c
        self.n += other.n
        if other.max > self.max:
            self.max = other.max

    def minus(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The latencies added since ``earlier`` (a copy of this histogram taken before).
        ``max`` stays the all-time maximum: a difference cannot recover it."""
        h = LatencyHistogram()
        for b, c in self.counts.items():
            left = c - earlier.counts.get(b, 0)
            if left:
                h.counts[b] = left
        h.n, h.max = self.n - earlier.n, self.max
        return h

    def percentile(self, p: float) -> int:
        """The ``p``-th percentile (0 < p <= 100), nearest rank; 0 when empty."""
        if self.n == 0:
            return 0
        rank = max(1, -(-self.n * p // 100))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                break
        return min(bucket_value(b), self.max)   # a bucket's middle may lie past the maximum


@dataclass
class OpStats:
    """What one opcode did."""

    count: int = 0
    errors: int = 0
    bytes: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def copy(self) -> OpStats:
        return OpStats(self.count, self.errors, self.bytes, self.latency.copy())

    def merge(self, other: OpStats) -> None:
        """Add ``other``'s requests to these."""
        self.count += other.count
        self.errors += other.errors
        self.bytes += other.bytes
        self.latency.merge(other.latency)

    def minus(self, earlier: OpStats) -> OpStats:
        return OpStats(self.count - earlier.count, self.errors - earlier.errors,
                       self.bytes - earlier.bytes, self.latency.minus(earlier.latency))

    def summary(self, with_max: bool = True) -> dict:
        out = {"count": self.count, "errors": self.errors, "bytes": self.bytes,
               "p50_us": self.latency.percentile(50), "p99_us": self.latency.percentile(99)}
        if with_max:
            out["max_us"] = self.latency.max
        return out


class Stats:
    """Cumulative per-opcode statistics, safe to update from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, OpStats] = {}
        self.started = time.monotonic()
        self.dropped_records = 0
        """Ops-log records lost because a ring was full (the data path never waits)."""
        self._sources: list[Callable[[], dict[str, OpStats]]] = []

    def add_source(self, source: Callable[[], dict[str, OpStats]]) -> None:
        """Statistics kept elsewhere (the C path's, :mod:`pyvirtiofsd.hotstats`): ``source()``
        returns cumulative per-opcode statistics, added to every :meth:`snapshot`."""
        self._sources.append(source)

    def add(self, opcode: str, error: int, nbytes: int, us: int) -> None:
        with self._lock:
            s = self._ops.get(opcode)
            if s is None:
                s = self._ops[opcode] = OpStats()
            s.count += 1
            if error:
                s.errors += 1
            s.bytes += nbytes
            s.latency.add(us)

    def snapshot(self) -> dict[str, OpStats]:
        """A copy of every opcode's statistics so far, wherever the requests were served
        (consistent for those Python served; C's are read while C goes on counting)."""
        with self._lock:
            ops = {op: s.copy() for op, s in self._ops.items()}
        for source in self._sources:
            for op, theirs in source().items():
                mine = ops.get(op)
                if mine is None:
                    ops[op] = theirs
                else:
                    mine.merge(theirs)
        return ops


def summarize(ops: dict[str, OpStats], with_max: bool = True) -> dict:
    """The fields of a ``fuse stats`` event: totals plus one summary per opcode."""
    return {
        "count": sum(s.count for s in ops.values()),
        "errors": sum(s.errors for s in ops.values()),
        "bytes": sum(s.bytes for s in ops.values()),
        "ops": {op: s.summary(with_max) for op, s in sorted(ops.items()) if s.count},
    }


class StatsReporter:
    """A thread that logs ``fuse stats`` events: periodically, on request, and at the end.

    :meth:`request` is what the SIGUSR1 handler calls: it bumps a counter and sets an event,
    and the thread does the logging -- logging from the handler itself could deadlock on
    the log stream's lock if the signal interrupted the main thread while it was logging.
    The thread uses only a futex wait (no pipe, no select): few system calls for the
    sandbox's filter to allow.
    """

    def __init__(self, stats: Stats, interval: float = 0.0):
        self.stats = stats
        self.interval = interval if interval and interval > 0 else None
        self._wake = threading.Event()
        self._requests = 0
        self._stop = False
        self._last = stats.snapshot()
        self._last_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="stats-reporter", daemon=True)

    def start(self) -> StatsReporter:
        self._thread.start()
        return self

    def request(self) -> None:
        """Ask for a report of the totals (SIGUSR1)."""
        self._requests += 1
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread, then log the totals one last time."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.report_total("exit")

    def report_total(self, why: str) -> None:
        ops = self.stats.snapshot()
        log.info("fuse stats", scope="total", why=why,
                 seconds=round(time.monotonic() - self.stats.started, 3), **summarize(ops))

    def report_interval(self) -> None:
        now, ops = time.monotonic(), self.stats.snapshot()
        empty = OpStats()
        delta = {op: s.minus(self._last.get(op, empty)) for op, s in ops.items()}
        log.info("fuse stats", scope="interval", seconds=round(now - self._last_at, 3),
                 **summarize(delta, with_max=False))
        self._last, self._last_at = ops, now

    def _run(self) -> None:
        seen = 0
        deadline = time.monotonic() + self.interval if self.interval else None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop:
                return
            try:
                if self._requests != seen:
                    seen = self._requests
                    self.report_total("SIGUSR1")
                if deadline is not None and time.monotonic() >= deadline:
                    self.report_interval()
                    deadline += self.interval
                    if deadline < time.monotonic():   # fell behind: do not report in a burst
                        deadline = time.monotonic() + self.interval
            except Exception:  # noqa: BLE001 - a reporting bug must not end the reports
                log.error("statistics report failed", exc_info=True)


__all__ = ["LatencyHistogram", "OpStats", "Stats", "StatsReporter", "bucket_of", "bucket_value",
           "summarize"]
