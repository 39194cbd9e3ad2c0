"""The handle table: the ``fh`` numbers OPEN/OPENDIR/CREATE hand to the guest.

A handle is an ordinary (not ``O_PATH``) fd.  Like inodes, handles are borrowed for the
duration of an operation, so a RELEASE racing with a READ cannot close the fd (and let the
number be reused by another open) while the READ still moves data through it.  Handle
numbers come from a counter and are never reused within a session.
"""
from __future__ import annotations

import errno
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass(eq=False, slots=True)
class Handle:
    fh: int
    fd: int
    nodeid: int
    users: int = 0
    dead: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Serialises users of the fd's file position (readdir's seek + getdents)."""


class HandleTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, fd: int, nodeid: int) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = Handle(fh, fd, nodeid)
        return fh

    def acquire(self, fh: int) -> Handle:
        """Borrow handle ``fh`` until :meth:`unborrow`; EBADF if unknown."""
        with self._lock:
            h = self._handles.get(fh)
            if h is None:
                raise OSError(errno.EBADF, "unknown file handle", fh)
            h.users += 1
            return h

    def unborrow(self, h: Handle) -> None:
        with self._lock:
            h.users -= 1
            close = h.dead and h.users == 0
        if close:
            os.close(h.fd)

    @contextmanager
    def borrow(self, fh: int) -> Iterator[Handle]:
        h = self.acquire(fh)
        try:
            yield h
        finally:
            self.unborrow(h)

    def remove(self, fh: int) -> None:
        """RELEASE: drop ``fh``; its fd closes when the last borrower is done."""
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                raise OSError(errno.EBADF, "unknown file handle", fh)
            if h.users:
                h.dead = True
                return
        os.close(h.fd)

    def clear(self) -> None:
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
            to_close = []
            for h in handles:
                if h.users:
                    h.dead = True
                else:
                    to_close.append(h.fd)
        for fd in to_close:
            os.close(fd)
