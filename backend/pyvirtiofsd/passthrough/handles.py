"""The handle table: the ``fh`` numbers OPEN/OPENDIR/CREATE hand to the guest.

A handle is an ordinary (not ``O_PATH``) fd.  Like inodes, handles are borrowed for the
duration of an operation, so a RELEASE racing with a READ cannot close the fd (and let the
number be reused by another open) while the READ still moves data through it.  Handle
numbers come from a counter and are never reused within a session.

Every handle is also registered in a C table (``cext/hotpath.c``) from which the C hot path
serves READ and WRITE without Python.  The C entry then owns the fd: it is closed by
:c:func:`pvfs_fh_close` once Python is done with the handle *and* no C READ/WRITE is
using it, so neither side can close it under the other.
"""
from __future__ import annotations

import errno
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from .._cext import ffi, lib


@dataclass(eq=False, slots=True)
class Handle:
    fh: int
    fd: int
    nodeid: int
    users: int = 0
    dead: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Serialises users of the fd's file position (readdir's seek + getdents)."""
    c: Any = None
    """The C table's entry (which then closes the fd), or None."""


class HandleTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._next = 1
        self._c = ffi.gc(lib.pvfs_fhtab_new(), lib.pvfs_fhtab_unref)

    @property
    def c_table(self):
        """The C table (``struct pvfs_fhtab *``) the hot path looks handles up in."""
        return self._c

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, fd: int, nodeid: int) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            h = Handle(fh, fd, nodeid)
            entry = lib.pvfs_fhtab_add(self._c, fh, fd)
            h.c = entry if entry != ffi.NULL else None
            self._handles[fh] = h
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
            _close(h)

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
            lib.pvfs_fhtab_remove(self._c, fh)
            if h.users:
                h.dead = True
                return
        _close(h)

    def clear(self) -> None:
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
            to_close = []
            for h in handles:
                lib.pvfs_fhtab_remove(self._c, h.fh)
                if h.users:
                    h.dead = True
                else:
                    to_close.append(h)
        for h in to_close:
            _close(h)


def _close(h: Handle) -> None:
    """Python is done with ``h``: close its fd, or let the C table close it once no C
    READ/WRITE uses it any more."""
    if h.c is not None:
        lib.pvfs_fh_close(h.c)
        h.c = None
    else:
        os.close(h.fd)
