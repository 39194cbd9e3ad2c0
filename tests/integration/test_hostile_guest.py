"""A hostile guest against the real daemon: what it claims sizes nothing, what it gets
wrong fills no log, and what it opens and forgets leaves nothing behind.

These drive ``python -m pyvirtiofsd`` through our front-end with chains shaped by hand.
"""
from __future__ import annotations

import os
import re
import time

import pytest

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode

MiB = 1 << 20
ROOT = abi.FUSE_ROOT_ID
NO_REPLY = {Opcode.FUSE_FORGET, Opcode.FUSE_BATCH_FORGET, Opcode.FUSE_INTERRUPT}
ALIAS = 256 * MiB          # one guest buffer every big descriptor points at
ALIASES = 15               # 15 x 256 MiB + a little: just under the 4 GiB a u32 can claim
QD = 16


def status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")       # VmHWM := VmRSS


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Hostile:
    """Chains whose descriptors alias one big guest buffer: the chain's length is ~4 GiB
    while the guest spends 256 MiB (which it never even touches)."""

    def __init__(self, client):
        self.client = client
        fe = client.fe
        self.q = fe.queues[1]
        self.alias = fe.alloc.alloc(ALIAS)
        self.heads = [fe.alloc.alloc(4096) for _ in range(QD)]
        self.replies = [fe.alloc.alloc(4096) for _ in range(QD)]
        self.unique = 1 << 40

    def burst(self, opcode: int, nodeid: int, args: bytes, claim: int | None = None,
              out_aliases: int = ALIASES) -> list[tuple[int, int]]:
        """QD chains at once: header + args, then the aliases; the reply area a page and
        ``out_aliases`` more aliases.  ``claim``: fuse_in_header.len (default: the chain's
        whole readable length).  Returns (error, used length) per chain."""
        fe = self.client.fe
        in_len = abi.fuse_in_header.size + len(args) + ALIASES * ALIAS
        pending = {}
        for i in range(QD):
            self.unique += 2
            hdr = abi.fuse_in_header.build(len=in_len if claim is None else claim, opcode=opcode,
                                           unique=self.unique, nodeid=nodeid)
            fe.ram.write(self.heads[i], hdr + args)
            fe.ram.write(self.replies[i], b"\xa5" * 16)
            readable = [(self.heads[i], abi.fuse_in_header.size + len(args))] + \
                [(self.alias, ALIAS)] * ALIASES
            writable = [(self.replies[i], 4096)] + [(self.alias, ALIAS)] * out_aliases
            pending[self.q.add(readable, writable)] = i
        self.q.kick(force=True)
        results = {}
        deadline = time.monotonic() + 60
        while len(results) < QD:
            used = self.q.get_used()
            if used is None:
                assert time.monotonic() < deadline, f"opcode {opcode}: chains not returned"
                self.q.wait(0.2)
                continue
            head, length = used
            i = pending[head]
            oh = abi.fuse_out_header.parse(fe.ram.read(self.replies[i], 16))
            results[i] = (oh.error if length else None, length)
        return [results[i] for i in range(QD)]


@pytest.fixture
def hostile(start_daemon, connect, shared):
    (shared / "big").write_bytes(b"")
    os.truncate(shared / "big", 64 * MiB)       # sparse: READs cost no disk
    (shared / "dir").mkdir()
    for i in range(300):
        (shared / "dir" / f"entry-with-a-longish-name-{i:04d}").write_bytes(b"x")
    os.setxattr(shared / "big", "user.k", b"v" * 1000)
    daemon = start_daemon("--xattr", "--log-level", "info")
    client = connect(daemon, ram_size=ALIAS + 64 * MiB, queue_size=1024)
    client.daemon = daemon
    return Hostile(client)


def test_aliased_chains_claiming_4_gib_leave_the_daemon_s_memory_bounded(hostile):
    c = hostile.client
    pid = c.daemon.serving_pid()
    big, _ = c.lookup(ROOT, b"big")
    d, _ = c.lookup(ROOT, b"dir")
    fh = c.open(big.nodeid, os.O_RDONLY).fh
    dh = c.opendir(d.nodeid).fh
    huge = 0xFFFFFFFF
    read_in = abi.fuse_read_in.pack(fh, 0, huge, 0, 0, 0, 0)
    dir_in = abi.fuse_read_in.pack(dh, 0, huge, 0, 0, 0, 0)
    xattr_in = abi.fuse_getxattr_in.pack(huge, 0)
    # Honest headers whose sizes claim 4 GiB, with ~4 GiB of (aliased) reply room.
    asks = [(Opcode.FUSE_READ, big.nodeid, read_in), (Opcode.FUSE_READDIR, d.nodeid, dir_in),
            (Opcode.FUSE_READDIRPLUS, d.nodeid, dir_in),
            (Opcode.FUSE_GETXATTR, big.nodeid, xattr_in + b"user.k\0"),
            (Opcode.FUSE_LISTXATTR, big.nodeid, xattr_in)]

    # Every code path once first, so that what is measured is growth, not first use.
    for opcode, nodeid, args in asks:
        hostile.burst(opcode, nodeid, args, claim=abi.fuse_in_header.size + len(args))
    for opcode in (Opcode.FUSE_LOOKUP, Opcode.FUSE_WRITE, Opcode.FUSE_GETATTR):
        hostile.burst(opcode, big.nodeid, bytes(64))
    time.sleep(0.2)
    reset_peak(pid)
    base = status(pid, "VmRSS")

    for opcode, nodeid, args in asks:
        for error, used in hostile.burst(opcode, nodeid, args,
                                         claim=abi.fuse_in_header.size + len(args)):
            assert error == 0, (opcode, error)
            assert used <= 16 + MiB, (opcode, used)        # max_pages x 4 KiB at most
    answers = {}
    for opcode in sorted(set(range(1, 64)) - {Opcode.FUSE_INIT, Opcode.FUSE_DESTROY}):
        # A header claiming the whole ~4 GiB chain: refused before its body is read.
        args = read_in if opcode == Opcode.FUSE_READ else bytes(64)
        answers[opcode] = set(hostile.burst(opcode, big.nodeid, args))

    grown = status(pid, "VmHWM") - base
    print(f"aliased chains at QD{QD}: VmHWM {base} KiB -> +{grown} KiB")   # for SECURITY.md
    assert grown <= 16 * 1024, f"peak RSS grew by {grown} KiB"
    for opcode, got in answers.items():
        assert got == ({(None, 0)} if opcode in NO_REPLY else {(-22, 16)}), (opcode, got)
    assert c.getattr(big.nodeid).size == 64 * MiB      # and it still serves
    assert "Traceback" not in c.daemon.log()


# --- a flood of malformed requests ------------------------------------------------------------

FLOOD = 100_000


def test_a_flood_of_malformed_requests_leaves_a_short_log(start_daemon, connect):
    daemon = start_daemon("--log-level", "info")
    c = connect(daemon, queue_size=256)
    fe, q = c.fe, c.fe.queues[1]
    before = len(daemon.log().splitlines())
    short, mismatch, reply = (fe.alloc.alloc(4096) for _ in range(3))
    fe.ram.write(short, b"\x01" * 20)
    fe.ram.write(mismatch, abi.fuse_in_header.build(len=4096, opcode=Opcode.FUSE_GETATTR,
                                                    unique=2, nodeid=1) + bytes(16))
    kinds = [
        ([(short, 20)], [(reply, 4096)]),          # too short for a header
        ([(mismatch, 56)], [(reply, 4096)]),       # a header claiming more than the chain
        ([(1 << 50, 56)], [(reply, 4096)]),        # a buffer outside guest memory
    ]
    sent = 0
    while sent < FLOOD:
        batch = min(128, FLOOD - sent)
        for i in range(batch):
            q.add(*kinds[(sent + i) % len(kinds)])
        q.kick(force=True)
        got = 0
        deadline = time.monotonic() + 60
        while got < batch:
            if q.get_used() is None:
                assert time.monotonic() < deadline
                q.wait(0.1)
            else:
                got += 1
        sent += batch
    assert c.getattr(ROOT).mode & 0o40000               # it still serves
    fe.close()                                          # the daemon ends with the connection
    assert daemon.wait(30) == 0
    lines = daemon.log().splitlines()[before:]
    print(f"{FLOOD} malformed requests: {len(lines)} log lines")          # for SECURITY.md
    assert len(lines) <= 100, "\n".join(lines[:200])
    assert not any("Traceback" in line for line in lines)
    # Every occurrence is accounted for: logged, or counted in a summary.
    logged = sum(1 for line in lines
                 if "[warning" in line and "guest conditions not logged" not in line)
    counted = sum(int(m.group(1)) for line in lines
                  if "guest conditions not logged" in line
                  for m in [re.search(r"count=(\d+)", line)])
    assert logged + counted == FLOOD, (logged, counted)


# --- nothing left behind ----------------------------------------------------------------------

def test_a_long_mixed_run_gives_back_every_fd_and_its_memory(start_daemon, connect, shared):
    from test_dax import DAX_INIT, R, RW
    (shared / "data").write_bytes(os.urandom(8 * MiB))
    daemon = start_daemon("--cache-size", "64M", "--xattr")
    c = connect(daemon, init=False, dax=True)
    c.init(flags=DAX_INIT)
    pid = daemon.serving_pid()

    def cycle(n: int) -> None:
        d = c.mkdir(ROOT, b"d%d" % n)[0].nodeid
        for i in range(20):
            name = b"f%d" % i
            e, _, o = c.create(d, name)
            c.write(e.nodeid, o.fh, 0, b"y" * 5000)
            c.release(e.nodeid, o.fh)
            e2, _ = c.lookup(d, name)
            c.getattr(e2.nodeid)
            c.forget(e.nodeid, 2)           # CREATE's lookup and LOOKUP's
        data, _ = c.lookup(ROOT, b"data")
        fh = c.open(data.nodeid, os.O_RDWR).fh
        c.setupmapping(data.nodeid, 0, 2 * MiB, 0, R, fh=fh)
        c.setupmapping(data.nodeid, 0, 2 * MiB, 0, RW, fh=fh)   # the read -> write upgrade
        c.setupmapping(data.nodeid, 2 * MiB, 2 * MiB, 4 * MiB, R)
        c.release(data.nodeid, fh)
        c.removemapping([(4 * MiB, 2 * MiB)])
        dh = c.opendir(d).fh
        entries = c.readdir(d, dh, size=64 << 10, plus=True)
        c.release(d, dh, dir=True)
        assert len(entries) == 22            # . .. and the 20 files
        for i in range(20):
            c.unlink(d, b"f%d" % i)
        c.rmdir(ROOT, b"d%d" % n)
        # READDIRPLUS counted a lookup for every entry it sent (. and .. have nodeid 0).
        held = [ent[4][0].nodeid for ent in entries if ent[4][0].nodeid]
        c.batch_forget([(nodeid, 1) for nodeid in held] + [(d, 1), (data.nodeid, 1)])
        if n % 3 == 0:
            c.destroy()                         # the guest unmounts ...
            c.init(flags=DAX_INIT)              # ... and mounts again
        if n % 5 == 4:
            c.fe.restart()                      # the guest reboots
            c.init(flags=DAX_INIT)

    cycle(0)
    time.sleep(0.2)
    fds, rss = fd_count(pid), status(pid, "VmRSS")
    for n in range(1, 32):
        cycle(n)        # the last one (31) neither unmounts nor reboots: it must clean up itself
    time.sleep(0.2)
    assert fd_count(pid) == fds
    assert status(pid, "VmRSS") <= rss + 4 * 1024
