"""The FUSE session's lifecycle is race-free (issue 11 part 6): a session that ends -- a
FUSE_DESTROY, or a device reset -- while requests that make inode and handle state are in
flight leaves nothing of that state behind, and the daemon serves the next session.

The real daemon, driven through our front-end at queue depth 16 by "lanes": each keeps one
request in flight and walks scripts of LOOKUP, CREATE/WRITE/RELEASE/UNLINK,
OPEN/READ/RELEASE, OPENDIR/READDIRPLUS/RELEASEDIR, GETATTR and FORGET.  In every cycle the
session ends while they run:

* ``destroy``: a FUSE_DESTROY on the request queue among the lanes' requests, then, once
  it is answered (and the hiprio queue is idle), a new FUSE_INIT.  The lanes send nothing
  from DESTROY until INIT is answered -- a guest's unmount and mount -- but whatever they
  had in flight races the DESTROY;
* ``destroy-stream``: the same, but the lanes go on submitting throughout, so requests
  follow DESTROY on the ring before the new INIT and race it and the INIT too.  Such a
  request must fail (EIO: no session) or leave nothing behind -- ring order is session
  order: a request the guest sent after DESTROY and before the INIT that follows it must
  not make state in the new session (the guest never learns which session a success
  belongs to);
* ``reset``: the front-end's ``restart()`` (stop every ring, RESET_DEVICE, new rings), as
  a VMM does when its guest reboots, then INIT.

What a lane obtained before the session ended (lookups, handles) it no longer holds
afterwards: the daemon must have dropped it.  A request the guest made before DESTROY
belongs to the old session, whenever the daemon gets to it: should it still make state
after the new INIT, that state is orphaned (no guest ever forgets it).

Then the lanes stop, release and forget whatever they hold in the new session, and the
serving process must be back at the fd count it had right after the first INIT (the test
stops after ENOUGH cycles that were not; a failure names the files left open and, for the
files CREATE made, when their CREATEs were sent and answered).  Requests
racing the session's end may fail with any errno; asserted are only: every reply has a
well-formed header (its unique, a length matching the used length, an errno in range),
no used element reaches a ring after GET_VRING_BASE stopped it, the daemon never dies, and
it answers GETATTR and LOOKUP after every cycle.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import os
import random
import time

import pytest

from pyvirtiofsd.frontend.fuse_client import HIPRIO
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode

ROOT = abi.FUSE_ROOT_ID
QD = 16
CYCLES = 80
ENOUGH = 5            # leaking cycles that make the case: stop there
FILES = [b"f%d" % i for i in range(8)]
DIR_ENTRIES = 12
READDIR_SIZE = 8192
HOTPATH = [pytest.param({"PYVIRTIOFSD_HOTPATH": "1"}, id="hotpath"),
           pytest.param({"PYVIRTIOFSD_HOTPATH": "0"}, id="python")]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> collections.Counter:
    out = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[os.readlink(f"/proc/{pid}/fd/{fd}")] += 1
        except OSError:
            pass
    return out


@dataclasses.dataclass
class Req:
    opcode: int
    nodeid: int = 0
    args: bytes = b""
    out_size: int = 0
    queue: int | None = None
    no_reply: bool = False


def lookup(parent: int, name: bytes) -> Req:
    return Req(Opcode.FUSE_LOOKUP, parent, name + b"\0", abi.FUSE_ENTRY_OUT_SIZE)


def forget(nodeid: int, n: int) -> Req:
    return Req(Opcode.FUSE_FORGET, nodeid, abi.fuse_forget_in.build(nlookup=n), queue=HIPRIO,
               no_reply=True)


def release(nodeid: int, fh: int, dir: bool = False) -> Req:
    return Req(Opcode.FUSE_RELEASEDIR if dir else Opcode.FUSE_RELEASE, nodeid,
               abi.fuse_release_in.build(fh=fh))


def entry_nodeid(body: bytes) -> int:
    return abi.fuse_entry_out_head.parse(body).nodeid


class Lane:
    """One request in flight at a time, in one session (``epoch``): what it looked up
    (``held``: nodeid -> lookups) and opened (``fhs``: fh -> (nodeid, is_dir)) there."""

    def __init__(self, index: int, epoch: int, rng: random.Random):
        self.index = index
        self.epoch = epoch
        self.rng = rng
        self.held: collections.Counter = collections.Counter()
        self.fhs: dict[int, tuple[int, bool]] = {}
        self.serial = 0
        self.script = self._run()
        self.pending = None         # the request in flight
        self.next_req = next(self.script)

    def got(self, reply) -> None:
        self.pending = None
        self.next_req = self.script.send(reply)

    def _hold(self, reply) -> int:
        n = entry_nodeid(reply.body)
        self.held[n] += 1
        return n

    def _run(self):
        rng = self.rng
        while True:
            what = rng.choice(("lookup", "lookup", "create", "open_read", "readdirplus",
                               "getattr", "forget"))
            if len(self.held) > 16:
                what = "forget"
            if what == "lookup":
                r = yield lookup(ROOT, rng.choice(FILES + [b"d"]))
                if not r.error:
                    self._hold(r)
            elif what == "create":
                self.serial += 1
                name = b"c%d-%d" % (self.index, self.serial)
                r = yield Req(Opcode.FUSE_CREATE, ROOT,
                              abi.fuse_create_in.build(flags=os.O_RDWR, mode=0o644) + name + b"\0",
                              abi.FUSE_ENTRY_OUT_SIZE + abi.fuse_open_out.size)
                if r.error:
                    continue
                n = self._hold(r)
                fh = abi.fuse_open_out.parse(r.body, abi.FUSE_ENTRY_OUT_SIZE).fh
                self.fhs[fh] = (n, False)
                yield Req(Opcode.FUSE_WRITE, n, abi.fuse_write_in.build(fh=fh, size=100)
                          + b"w" * 100, abi.fuse_write_out.size)
                r = yield release(n, fh)
                if not r.error:
                    del self.fhs[fh]
                yield Req(Opcode.FUSE_UNLINK, ROOT, name + b"\0")
            elif what == "open_read":
                r = yield lookup(ROOT, rng.choice(FILES))
                if r.error:
                    continue
                n = self._hold(r)
                r = yield Req(Opcode.FUSE_OPEN, n, abi.fuse_open_in.build(flags=os.O_RDONLY),
                              abi.fuse_open_out.size)
                if r.error:
                    continue
                fh = abi.fuse_open_out.parse(r.body).fh
                self.fhs[fh] = (n, False)
                yield Req(Opcode.FUSE_READ, n, abi.fuse_read_in.build(fh=fh, size=4096), 4096)
                r = yield release(n, fh)
                if not r.error:
                    del self.fhs[fh]
            elif what == "readdirplus":
                r = yield lookup(ROOT, b"d")
                if r.error:
                    continue
                d = self._hold(r)
                r = yield Req(Opcode.FUSE_OPENDIR, d, abi.fuse_open_in.build(flags=os.O_RDONLY),
                              abi.fuse_open_out.size)
                if r.error:
                    continue
                fh = abi.fuse_open_out.parse(r.body).fh
                self.fhs[fh] = (d, True)
                r = yield Req(Opcode.FUSE_READDIRPLUS, d,
                              abi.fuse_read_in.build(fh=fh, size=READDIR_SIZE), READDIR_SIZE)
                if not r.error:
                    pos = 0
                    while pos < len(r.body):   # every entry with a nodeid counts a lookup
                        n = entry_nodeid(r.body[pos:])
                        d_ = abi.fuse_dirent.parse(r.body, pos + abi.FUSE_ENTRY_OUT_SIZE)
                        if n:
                            self.held[n] += 1
                        pos += abi.direntplus_size(d_.namelen)
                r = yield release(d, fh, dir=True)
                if not r.error:
                    del self.fhs[fh]
            elif what == "getattr":
                n = rng.choice(list(self.held) or [ROOT])
                yield Req(Opcode.FUSE_GETATTR, n, abi.fuse_getattr_in.build(),
                          abi.FUSE_ATTR_OUT_SIZE)
            elif what == "forget" and self.held:
                n = rng.choice(list(self.held))
                yield forget(n, self.held[n])
                del self.held[n]     # once sent (a FORGET not sent is still to be made)

    def cleanup(self):
        """What the lane still holds, given back: RELEASE(DIR)s, then FORGETs."""
        for fh, (n, is_dir) in self.fhs.items():
            yield release(n, fh, is_dir)
        self.fhs.clear()
        for n, k in self.held.items():
            yield forget(n, k)
        self.held.clear()


class Driver:
    """Keeps the lanes' requests in flight on one FuseClient and checks every reply."""

    def __init__(self, client, seed: int):
        self.c = client
        self.rng = random.Random(seed)
        self.epoch = 0
        self.lanes = [Lane(i, 0, random.Random(self.rng.random())) for i in range(QD)]
        self.inflight: dict[int, tuple] = {}   # unique -> (pending, lane | None, epoch)
        self.replies = collections.Counter()   # (opcode, errno, steady) of every reply
        self.submitting = True
        self.racing = False      # from the session's end until the new INIT is answered
        self.creates: dict[bytes, list] = {}   # name -> what became of its CREATEs (diagnosis)

    # -- transport -----------------------------------------------------------------------

    def submit(self, req: Req, lane=None):
        p = self.c.submit(req.opcode, req.nodeid, req.args, req.out_size, queue=req.queue,
                          no_reply=req.no_reply)
        p.req = req
        # steady: no session change under way, nothing of an old session in flight
        p.steady = not self.racing and all(e == self.epoch for _, _, e in self.inflight.values())
        self.inflight[p.unique] = (p, lane, self.epoch if lane is None else lane.epoch)
        if lane is not None:
            lane.pending = p
        return p

    def _check_reply(self, p, epoch) -> None:
        """The reply as the guest's driver reads it: a header written by the daemon (the
        area was poisoned), for this request, as long as the used length says."""
        r = p.reply
        if p.req.no_reply:
            assert r.used_len == 0, f"{Opcode(p.req.opcode).name}: used length {r.used_len}"
            return
        raw = self.c.fe.ram.read(p.out_gpa, abi.fuse_out_header.size)   # freed, not reused yet
        h = abi.fuse_out_header.parse(raw)
        what = f"{Opcode(p.req.opcode).name} unique {p.unique} (epoch {epoch}/{self.epoch})"
        assert r.used_len >= abi.fuse_out_header.size, f"{what}: used length {r.used_len}"
        assert h.unique == p.unique, f"{what}: reply carries unique {h.unique:#x}"
        assert h.len == r.used_len, f"{what}: header len {h.len}, used length {r.used_len}"
        assert h.len <= abi.fuse_out_header.size + p.req.out_size, f"{what}: len {h.len}"
        assert -4095 <= h.error <= 0, f"{what}: error {h.error}"
        assert not h.error or h.len == abi.fuse_out_header.size, f"{what}: error with a body"
        self.replies[(Opcode(p.req.opcode).name[5:], -h.error, p.steady)] += 1
        if p.req.opcode == Opcode.FUSE_CREATE:
            name = p.req.args[abi.fuse_create_in.size:-1]
            self.creates.setdefault(name, []).append(
                f"CREATE sent in session {epoch}{' while the session changed' if not p.steady else ''}, "
                f"answered {'ok' if not h.error else errno.errorcode.get(-h.error)} "
                f"in session {self.epoch}")

    def poll(self, wait: float = 0.005) -> list:
        """Collect what came back; returns [(pending, lane, epoch)] of the answered."""
        queues = {p.queue.index: p.queue for p, _, _ in self.inflight.values()}
        for q in queues.values():
            self.c._collect(q)
        done = [v for v in self.inflight.values() if v[0].reply is not None]
        for p, lane, epoch in done:      # before anything new reuses their buffers
            del self.inflight[p.unique]
            self._check_reply(p, epoch)
        if not done and queues:
            q = queues.get(1) or next(iter(queues.values()))
            q.wait(wait)
        return done

    def step(self) -> list:
        """Submit for idle lanes, collect replies, advance lanes whose reply came."""
        if self.submitting:
            for lane in self.lanes:
                if lane.pending is None and lane.next_req is not None:
                    self.submit(lane.next_req, lane)
                    lane.next_req = None
        done = self.poll()
        for p, lane, epoch in done:
            if lane is not None and lane.epoch == self.epoch and lane.pending is p:
                lane.got(p.reply)
        return done

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step()

    def wait_for(self, p, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while p.reply is None:
            assert time.monotonic() < deadline, f"no reply to {Opcode(p.req.opcode).name}"
            self.step()

    def drain(self, queue: int | None = None, epoch: int | None = None, timeout=30.0) -> None:
        """Wait (collecting, submitting nothing) until nothing of ``queue``/``epoch`` is in
        flight."""
        submitting, self.submitting = self.submitting, False
        deadline = time.monotonic() + timeout
        try:
            while any((queue is None or p.queue.index == queue) and (epoch is None or e == epoch)
                      for p, _, e in self.inflight.values()):
                assert time.monotonic() < deadline, f"requests never answered: {self.describe()}"
                self.step()
        finally:
            self.submitting = submitting

    def describe(self) -> str:
        return ", ".join(f"{Opcode(p.req.opcode).name}#{p.unique}@q{p.queue.index}/e{e}"
                         for p, _, e in self.inflight.values())

    def new_session(self) -> None:
        """The old session is gone: nothing the lanes had is held any more."""
        self.epoch += 1
        self.lanes = [Lane(i, self.epoch, random.Random(self.rng.random())) for i in range(QD)]

    def abandon(self) -> None:
        """After a device reset: the old rings and whatever was on them are gone."""
        self.inflight.clear()

    # -- the session's end, racing the lanes ---------------------------------------------

    def init_request(self) -> Req:
        flags = abi.InitFlags.split(abi.FUSE_INIT_EXT)
        return Req(Opcode.FUSE_INIT, 0, abi.fuse_init_in.build(
            major=7, minor=38, max_readahead=1 << 17, flags=flags.flags, flags2=flags.flags2),
            abi.fuse_init_out.size)

    def destroy_and_init(self, stream: bool) -> None:
        """DESTROY, then INIT.  ``stream``: the lanes go on submitting meanwhile."""
        self.racing = True
        self.submitting = stream
        p = self.submit(Req(Opcode.FUSE_DESTROY))
        self.wait_for(p)
        assert p.reply.error == 0, f"DESTROY: {p.reply.error}"
        self.new_session()   # the lanes go on, without a session until INIT
        # Old FORGETs on the hiprio queue would name nodeids of the old session in the new
        # one (the same numbers may be given out again): a guest sends none after DESTROY.
        self.drain(queue=HIPRIO, epoch=self.epoch - 1)
        p = self.submit(self.init_request())
        self.wait_for(p)
        assert p.reply.error == 0, f"INIT: {p.reply.error}"
        self.racing = False
        self.submitting = True
        # Requests the lanes of the new session submitted after DESTROY was answered and
        # before INIT was that succeeded were served in the new session (without one they
        # fail): they hold what they got.

    def reset_and_init(self) -> list:
        """fe.restart() with requests in flight; returns the old queues (rings kept, for
        :meth:`check_stopped_rings`)."""
        fe = self.c.fe
        self.racing = True
        stopped = []
        real_stop = fe.stop_queue

        def stop_queue(index: int) -> int:
            base = real_stop(index)
            q = fe.queues[index]
            stopped.append((q, q.used_idx(), base))
            q.free_rings = lambda: None       # kept until check_stopped_rings
            return base

        fe.stop_queue = stop_queue
        try:
            fe.restart()
        finally:
            del fe.stop_queue
        self.abandon()
        self.new_session()
        p = self.submit(self.init_request())
        self.wait_for(p)
        assert p.reply.error == 0, f"INIT: {p.reply.error}"
        self.racing = False
        return stopped

    def quiesce(self) -> None:
        """Stop the lanes, let everything come back, give back what they hold."""
        self.drain()
        self.submitting = False
        for lane in self.lanes:
            for req in lane.cleanup():
                self.wait_for(self.submit(req))
        self.drain()
        self.lanes = [Lane(i, self.epoch, random.Random(self.rng.random())) for i in range(QD)]
        self.submitting = True


def check_stopped_rings(stopped) -> None:
    for q, used, base in stopped:
        later = q.used_idx()
        assert later == used, (f"queue {q.index}: {later - used & 0xFFFF} used elements written "
                               f"after GET_VRING_BASE stopped it (base {base})")
        type(q).free_rings(q)


@pytest.fixture
def files(shared):
    for name in FILES:
        (shared / name.decode()).write_bytes(os.urandom(8192))
    (shared / "d").mkdir()
    for i in range(DIR_ENTRIES):
        (shared / "d" / f"e{i}").write_bytes(b"e")
    return shared


@pytest.mark.parametrize("env", HOTPATH)
@pytest.mark.parametrize("event", ["destroy", "destroy-stream", "reset"])
def test_the_session_ends_cleanly_under_load(files, start_daemon, connect, env, event):
    daemon = start_daemon("--log-level", "info", env=env)
    c = connect(daemon, queue_size=128)
    pid = daemon.serving_pid()
    time.sleep(0.2)
    baseline, baseline_fds = fd_count(pid), fd_targets(pid)
    python = env["PYVIRTIOFSD_HOTPATH"] == "0"
    drv = Driver(c, seed=len(event) + python)
    rng = random.Random(1)
    leaks = []
    for cycle in range(CYCLES):
        drv.creates.clear()
        drv.run_for(rng.uniform(0.05, 0.25))             # a steady stream, 16 in flight
        if event.startswith("destroy"):
            drv.destroy_and_init(stream=event == "destroy-stream")
        else:
            stopped = drv.reset_and_init()
        drv.run_for(rng.uniform(0.02, 0.1))              # the new session, under load too
        drv.quiesce()
        if event == "reset":
            check_stopped_rings(stopped)
        # alive, answering, and still the process we started
        assert daemon.proc.poll() is None, f"daemon died:\n{daemon.log()[-3000:]}"
        assert daemon.serving_pid() == pid
        assert c.getattr(ROOT).ino
        e, _ = c.lookup(ROOT, FILES[0])
        c.forget(e.nodeid, 1)
        # back at the baseline (FORGETs are served asynchronously: give them a moment)
        deadline = time.monotonic() + 0.5
        while fd_count(pid) != baseline and time.monotonic() < deadline:
            time.sleep(0.02)
        now = fd_count(pid)
        if now != baseline:
            extra = fd_targets(pid) - baseline_fds
            # how the files CREATE made came to be left open
            how = {n: drv.creates[n] for n in (os.path.basename(p.removesuffix(" (deleted)"))
                                               .encode() for p in extra) if n in drv.creates}
            leaks.append((cycle, now - baseline, dict(extra), how))
            baseline, baseline_fds = now, fd_targets(pid)   # count each cycle's own leak
            if sum(n > 0 for _, n, _, _ in leaks) >= ENOUGH:
                break
    racing = {k[:2]: v for k, v in drv.replies.items() if k[1] and not k[2]}
    steady = {k[:2]: v for k, v in drv.replies.items() if k[1] and k[2]}
    print(f"\n{event}/{'python' if python else 'hotpath'}: {sum(drv.replies.values())} replies; "
          f"errors (op, errno): racing the session's end {racing}; steady {steady}; "
          f"leaks (cycle, fds, what) {leaks}")
    assert not leaks, (f"{len(leaks)} of {cycle + 1} cycles changed the daemon's fd count "
                       f"(cycle, fds, what, the CREATEs of what): {leaks[:4]}")
