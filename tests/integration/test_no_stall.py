"""A slow host file system stalls nobody else's requests (issue 11 part 5).

A FUSE file system mounted inside the shared directory (tests/integration/slowfuse.py)
takes seconds to answer GETATTR, LOOKUP or STATFS of its file, as a hung NFS server would.
The daemon serves one request queue; a request that reaches the slow file is made
available first, then many requests for an ordinary file behind it, all in flight
together on that queue.  The ordinary ones must all be answered long before the slow one,
which must still be answered, and correctly, in the end -- with the C hot path serving
GETATTR and LOOKUP (the default) and without it (``PYVIRTIOFSD_HOTPATH=0``).
"""
from __future__ import annotations

import os
import stat
import time

import pytest
import slowfuse

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode

ROOT = abi.FUSE_ROOT_ID
DELAY = 3.0          # what each slow answer of the host FUSE file system takes
FAST_WITHIN = 0.5    # by when every ordinary request must have its reply
ROUNDS = 20          # x (GETATTR, LOOKUP, READ, GETATTR of the root) of the ordinary file
FAST_DATA = b"fast file contents\n" * 50

HOTPATH = [pytest.param({"PYVIRTIOFSD_HOTPATH": "1"}, id="hotpath"),
           pytest.param({"PYVIRTIOFSD_HOTPATH": "0"}, id="python")]


@pytest.fixture
def slowfs(shared):
    """``shared/slowfs``: the slow FUSE mount (quick until armed); ``shared/fast``: a file."""
    (shared / "fast").write_bytes(FAST_DATA)
    (shared / "slowfs").mkdir()
    with slowfuse.mounted(shared / "slowfs") as fs:
        yield fs


@pytest.fixture
def rig(slowfs, start_daemon, connect, request):
    """The daemon (one request queue) serving ``shared`` with the slow mount in it, a client
    after INIT, and what the slow cases need: nodeids of slowfs, slowfs/slow and fast, and
    an open handle of fast."""
    daemon = start_daemon("--log-level", "info", env=request.param)
    c = connect(daemon, queue_size=256)
    c.daemon = daemon
    c.slowfs = slowfs
    c.slowfs_node = c.lookup(ROOT, b"slowfs")[0].nodeid        # the mount's root: quick
    c.slow_node = c.lookup(c.slowfs_node, slowfuse.SLOW_NAME)[0].nodeid
    c.fast_node = c.lookup(ROOT, b"fast")[0].nodeid
    c.fast_fh = c.open(c.fast_node, os.O_RDONLY).fh
    assert c.read(c.fast_node, c.fast_fh, 0, 64) == FAST_DATA[:64]
    yield c
    slowfs.delay = 0              # answer whatever is still waiting, before the daemon stops
    daemon.stop()


def submit_slow(c, what: str):
    """Make one request that reaches the slow file available; return (pending, check)."""
    if what == "getattr":
        p = c.submit(Opcode.FUSE_GETATTR, c.slow_node, abi.fuse_getattr_in.build(),
                     abi.FUSE_ATTR_OUT_SIZE)

        def check(body):
            attr = c.parse_attr_out(body)
            assert stat.S_ISREG(attr.mode) and attr.size == len(slowfuse.SLOW_DATA)
    elif what == "lookup":
        # The guest holds the inode already: C may serve it (statx of the name).
        p = c.submit(Opcode.FUSE_LOOKUP, c.slowfs_node, slowfuse.SLOW_NAME + b"\0",
                     abi.FUSE_ENTRY_OUT_SIZE)

        def check(body):
            head, attr = c.parse_entry(body)
            assert head.nodeid == c.slow_node
            assert stat.S_ISREG(attr.mode) and attr.size == len(slowfuse.SLOW_DATA)
    elif what == "statfs":
        p = c.submit(Opcode.FUSE_STATFS, c.slow_node, b"", abi.fuse_kstatfs.size)

        def check(body):
            st = abi.fuse_kstatfs.parse(body)
            assert (st.blocks, st.bsize, st.namelen) == (1000, 4096, 255)
    else:
        raise ValueError(what)
    return p, check


def submit_fast(c) -> list:
    """ROUNDS x (GETATTR, LOOKUP, READ of fast, GETATTR of the root), all in flight."""
    pending = []
    for _ in range(ROUNDS):
        pending.append(("getattr", c.submit(Opcode.FUSE_GETATTR, c.fast_node,
                                            abi.fuse_getattr_in.build(), abi.FUSE_ATTR_OUT_SIZE)))
        pending.append(("lookup", c.submit(Opcode.FUSE_LOOKUP, ROOT, b"fast\0",
                                           abi.FUSE_ENTRY_OUT_SIZE)))
        pending.append(("read", c.submit(Opcode.FUSE_READ, c.fast_node,
                                          abi.fuse_read_in.build(fh=c.fast_fh, size=4096), 4096)))
        pending.append(("root", c.submit(Opcode.FUSE_GETATTR, ROOT, abi.fuse_getattr_in.build(),
                                         abi.FUSE_ATTR_OUT_SIZE)))
    return pending


def check_fast(c, kind: str, body: bytes) -> None:
    if kind == "getattr":
        assert c.parse_attr_out(body).size == len(FAST_DATA)
    elif kind == "lookup":
        head, attr = c.parse_entry(body)
        assert head.nodeid == c.fast_node and attr.size == len(FAST_DATA)
    elif kind == "read":
        assert body == FAST_DATA
    else:
        assert stat.S_ISDIR(c.parse_attr_out(body).mode)


def race(c, slow: list[str]):
    """The slow requests first, the fast ones behind them; returns the seconds until the
    last fast reply and until each slow one, measured from the first submission."""
    c.slowfs.delay = DELAY
    c.slowfs.slow = {"getattr", "lookup", "statfs"}
    t0 = time.monotonic()
    slow_pending = [submit_slow(c, what) for what in slow]
    time.sleep(0.05)              # the daemon has taken them (and is waiting on the host)
    fast = submit_fast(c)
    for kind, p in fast:
        reply = c.reap(p, timeout=3 * DELAY + 10)
        assert reply.error == 0, (kind, reply.error)
        assert reply.unique == p.unique
        check_fast(c, kind, reply.body)
    fast_done = time.monotonic() - t0
    slow_done = []
    for what, (p, check) in zip(slow, slow_pending):
        reply = c.reap(p, timeout=3 * DELAY + 10)
        slow_done.append(time.monotonic() - t0)
        assert reply.error == 0, (what, reply.error)
        assert reply.unique == p.unique
        check(reply.body)
    c.slowfs.slow = set()
    return fast_done, slow_done


@pytest.mark.parametrize("rig", HOTPATH, indirect=True)
@pytest.mark.parametrize("slow", [["getattr"], ["lookup"], ["statfs"],
                                  ["getattr", "lookup", "statfs"], ["statfs"] * 3],
                         ids=["getattr", "lookup", "statfs", "three-at-once", "statfs-x3"])
def test_a_slow_host_file_system_stalls_no_other_request(rig, slow):
    fast_done, slow_done = race(rig, slow)
    print(f"\n{slow}: fast requests done after {fast_done:.3f} s, slow ones after "
          + ", ".join(f"{t:.3f}" for t in slow_done) + " s")
    assert min(slow_done) >= DELAY - 0.1, "the slow request was not slow: the test proves nothing"
    assert rig.slowfs.delayed >= len(slow)
    assert fast_done < FAST_WITHIN, (
        f"{4 * ROUNDS} requests for an ordinary file waited {fast_done:.3f} s behind "
        f"{slow} of a file on a slow host file system (answered after {slow_done} s)")
    # and the daemon serves on as before
    assert rig.getattr(rig.slow_node).size == len(slowfuse.SLOW_DATA)
    assert rig.read(rig.fast_node, rig.fast_fh, 0, 64) == FAST_DATA[:64]


@pytest.mark.parametrize("rig", HOTPATH, indirect=True)
def test_a_slow_first_lookup_stalls_no_other_request(rig):
    """LOOKUP of a name the guest does not hold yet (a new inode: openat2 and statx)."""
    c = rig
    c.forget(c.slow_node, 1)              # the fixture's LOOKUP; nothing else held it
    c.slowfs.delay = DELAY
    c.slowfs.slow = {"getattr", "lookup"}
    t0 = time.monotonic()
    p, check = submit_slow(c, "lookup")
    time.sleep(0.05)
    fast = submit_fast(c)
    for kind, f in fast:
        reply = c.reap(f, timeout=3 * DELAY + 10)
        assert reply.error == 0, (kind, reply.error)
        check_fast(c, kind, reply.body)
    fast_done = time.monotonic() - t0
    reply = c.reap(p, timeout=3 * DELAY + 10)
    slow_done = time.monotonic() - t0
    print(f"\nnew lookup: fast requests done after {fast_done:.3f} s, slow after {slow_done:.3f} s")
    assert reply.error == 0
    head, attr = c.parse_entry(reply.body)
    assert stat.S_ISREG(attr.mode) and attr.size == len(slowfuse.SLOW_DATA)
    assert slow_done >= DELAY - 0.1
    assert fast_done < FAST_WITHIN, (
        f"{4 * ROUNDS} requests for an ordinary file waited {fast_done:.3f} s behind a "
        f"LOOKUP on a slow host file system (answered after {slow_done:.3f} s)")
