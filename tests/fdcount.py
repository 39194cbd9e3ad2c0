"""This process's open fds, for the tests that check nothing leaks one.

Counted after a garbage collection: an earlier test's object caught in a reference cycle
may otherwise close its fds in the middle of a later test, between its two counts (seen
in CI: three fds gone from a RELEASEDIR test that opens and closes one)."""
from __future__ import annotations

import gc
import os


def open_fds() -> set[int]:
    gc.collect()
    return {int(n) for n in os.listdir("/proc/self/fd")}


def fd_count() -> int:
    return len(open_fds())
