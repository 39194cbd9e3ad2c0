"""Conditions a guest causes, logged so that a guest cannot flood the log.

A guest may send malformed requests, unreadable buffers and lengths that do not add up as
fast as it likes.  Each is worth a line in the log -- the operator needs to know -- but a
hundred thousand of them are not worth a hundred thousand lines.  So each *kind* of
condition is logged the first :attr:`GuestFaults.limit` times in an interval; after that
its occurrences are only counted, and once the interval is over one summary line per kind
says how many were left out.  :meth:`GuestFaults.flush` writes the pending summaries at
once (the end of a session, the daemon stopping).

These lines never carry a traceback: a guest's mistake is not a bug in the daemon.  A
traceback in the log means the daemon itself went wrong.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from pyvirtiofsd import logs

_log = logs.get_logger("pyvirtiofsd.guest")


class _Kind:
    __slots__ = ("logged", "suppressed", "total", "since")

    def __init__(self, now: float):
        self.logged = 0       # lines written for it in the current interval
        self.suppressed = 0   # occurrences left out in the current interval
        self.total = 0        # occurrences since the daemon started
        self.since = now      # start of the current interval


class GuestFaults:
    """Rate-limited warnings about what a guest did wrong.

    ``limit``: lines per kind per ``interval`` seconds before the rest are only counted.
    """

    def __init__(self, limit: int = 10, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, logger: Any = None):
        self.limit = limit
        self.interval = interval
        self._clock = clock
        self._log = logger if logger is not None else _log
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()

    def report(self, kind: str, **fields: Any) -> None:
        """One occurrence of ``kind`` (a short sentence, the log event), with its details."""
        now = self._clock()
        with self._lock:
            k = self._kinds.get(kind)
            if k is None:
                k = self._kinds[kind] = _Kind(now)
            k.total += 1
            summary = None
            if now - k.since >= self.interval:
                summary = self._roll(kind, k, now)
            if k.logged >= self.limit:
                k.suppressed += 1
                write = last = False
            else:
                k.logged += 1
                write, last = True, k.logged == self.limit
        if summary is not None:
            self._log.warning(*summary[0], **summary[1])
        if write:
            if last:
                fields["further"] = f"more are counted, not logged, for {self.interval:g} s"
            self._log.warning(kind, **fields)

    def flush(self) -> None:
        """Write the summary of every kind with occurrences left out, now."""
        now = self._clock()
        with self._lock:
            lines = [s for kind, k in self._kinds.items()
                     if (s := self._roll(kind, k, now)) is not None]
        for args, kw in lines:
            self._log.warning(*args, **kw)

    def totals(self) -> dict[str, int]:
        """Occurrences per kind since start (logged or not)."""
        with self._lock:
            return {kind: k.total for kind, k in self._kinds.items()}

    def _roll(self, kind: str, k: _Kind, now: float):
        """Start a new interval for ``kind``; the summary line of the old one, if any."""
        line = None
        if k.suppressed:
            line = (("guest conditions not logged",),
                    {"kind": kind, "count": k.suppressed, "seconds": round(now - k.since, 1)})
        k.logged = k.suppressed = 0
        k.since = now
        return line


faults = GuestFaults()
"""The daemon's one instance: the server and the queues report to it."""
