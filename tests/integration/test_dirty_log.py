"""Dirty-page logging for live migration (VHOST_F_LOG_ALL, LOG_SHMFD, SET_LOG_BASE,
VHOST_VRING_F_LOG): while logging is on, every guest page the daemon writes has its bit
in the front-end's log -- reply headers and bodies from C (READ, GETATTR, LOOKUP, WRITE)
and from Python (STATFS, READDIR...), and the used ring -- and no other bit is set; with
logging off no bit appears.  Our front-end keeps the log in a memfd, as QEMU does, and
knows every buffer it gave the daemon and how much the daemon said it wrote into it.
"""
import os
import socket
import struct
import threading

import pytest

from pyvirtiofsd._cext import ffi, lib
from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import Server, ServerOptions
from pyvirtiofsd.vhost_user.backend import Backend, log_bytes_for
from pyvirtiofsd.vhost_user.connection import Connection
from pyvirtiofsd.vhost_user.protocol import FrontendReq as R, ProtocolFeature as P, VirtioFeature as V
from pyvirtiofsd.virtiofs import VirtioFsDevice

ROOT = abi.FUSE_ROOT_ID
PAGE = 4096
MiB = 1 << 20


def pages(gpa: int, length: int) -> set[int]:
    return set(range(gpa // PAGE, (gpa + length - 1) // PAGE + 1)) if length > 0 else set()


class RecordingClient(FuseClient):
    """A FuseClient that remembers, for each reply, the pages the daemon wrote (the used
    length from the reply area's start) and the pages it was allowed to write (the whole
    reply area)."""

    def __init__(self, fe, **kw):
        super().__init__(fe, **kw)
        self.written: set[int] = set()
        self.allowed: set[int] = set()

    def reap(self, p, timeout=None):
        reply = super().reap(p, timeout)
        self.written |= pages(p.out_gpa, min(reply.used_len, p.out_size))
        self.allowed |= pages(p.out_gpa, p.out_size)
        return reply

    def forget_pages(self) -> None:
        self.written.clear()
        self.allowed.clear()


class UsedRing:
    """The used-ring pages the daemon wrote since mark(): used->idx and each new element."""

    def __init__(self, fe):
        self.fe = fe
        self.mark()

    def mark(self) -> None:
        self.start = {q.index: q.used_idx() for q in self.fe.queues}

    def written(self) -> set[int]:
        out = set()
        for q in self.fe.queues:
            now = q.used_idx()
            if now == self.start[q.index]:
                continue
            out |= pages(q.used + 2, 2)
            for i in range(self.start[q.index], now):
                out |= pages(q.used + 4 + 8 * (i % q.size), 8)
        return out

    def allowed(self) -> set[int]:
        # Flags, idx, the elements and avail_event.
        return set().union(*(pages(q.used, 6 + 8 * q.size) for q in self.fe.queues))


def check_log(bits: set[int], written: set[int], allowed: set[int]) -> None:
    """Every written page is marked; nothing outside what the daemon could write is."""
    missing = written - bits
    assert not missing, f"pages written but not logged: {sorted(hex(p * PAGE) for p in missing)}"
    stray = bits - allowed
    assert not stray, f"pages logged that the daemon was never given: {sorted(hex(p * PAGE) for p in stray)}"


class Rig:
    """The virtio-fs device in this process (so the C path's counters can be read), driven
    by our front-end over a socketpair."""

    def __init__(self, directory, **fe_kw):
        self.fs = PassthroughFs(str(directory))
        self.server = Server(self.fs, ServerOptions())
        self.device = VirtioFsDevice(self.server, thread_pool_size=4, hot_threads=2)
        self.backend = Backend(self.device)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.thread = threading.Thread(target=self.backend.serve, args=(Connection(theirs),),
                                       daemon=True)
        self.thread.start()
        self.fe = VhostUserFrontend(sock=ours, dirty_log=True, **fe_kw).connect()
        self.client = RecordingClient(self.fe)
        self.client.init()

    def close(self):
        self.fe.close()
        self.thread.join(10)
        self.backend.close()
        self.device.close()
        self.fs.close()


@pytest.fixture(autouse=True)
def _c_path_on(monkeypatch):
    monkeypatch.setenv("PYVIRTIOFSD_HOTPATH", "1")


@pytest.fixture
def files(tmp_path):
    share = tmp_path / "data"
    share.mkdir()
    (share / "big").write_bytes(os.urandom(3 * MiB + 123))
    (share / "small").write_bytes(b"hello, migration\n")
    for i in range(40):
        (share / f"entry-{i:02d}").write_bytes(b"x")
    os.symlink("small" * 50, share / "link")
    return share


@pytest.fixture
def rig(files):
    # Rings of 1024: their used rings span pages that no reply buffer shares, so a used ring
    # left out of the log shows.
    r = Rig(files, ram_size=64 << 20, ram_layout=[(0, 0, 32 << 20), (1 << 32, 32 << 20, 32 << 20)],
            queue_size=1024)
    yield r
    r.close()


def workload(c: FuseClient) -> dict:
    """READs (C, in several sizes and at unaligned offsets), WRITE, LOOKUP, GETATTR, OPEN,
    STATFS, READDIR(PLUS) (C), READLINK (Python).  Returns what it read, to check the data too."""
    big = c.lookup(ROOT, b"big")[0]
    fh = c.open(big.nodeid, os.O_RDWR).fh
    got = {"big0": c.read(big.nodeid, fh, 0, MiB),
           "big1": c.read(big.nodeid, fh, MiB + 100, 256 * 1024 + 7),
           "big2": c.read(big.nodeid, fh, 3 * MiB, 4096)}
    assert c.write(big.nodeid, fh, 5, b"w" * 10000) == 10000
    c.getattr(big.nodeid)
    c.release(big.nodeid, fh)
    small = c.lookup(ROOT, b"small")[0]
    sfh = c.open(small.nodeid, os.O_RDONLY).fh
    got["small"] = c.read(small.nodeid, sfh, 0, 4096)
    c.release(small.nodeid, sfh)
    c.statfs()
    link = c.lookup(ROOT, b"link")[0]
    got["link"] = c.readlink(link.nodeid)          # READLINK: Python's
    got["names"] = [e[3] for e in c.listdir(ROOT)] + [e[3] for e in c.listdir(ROOT, plus=True)]
    return got


@pytest.mark.parametrize("shape", ["one buffer", "4000-byte descriptors", "indirect"])
def test_every_page_the_daemon_writes_is_logged_and_none_when_off(rig, files, shape):
    fe = rig.fe
    # The reply area as one descriptor, or split at unaligned offsets (a write crosses
    # descriptors, pages and iovecs), or in an indirect table.
    c = RecordingClient(fe, segment=4000 if shape.startswith("4000") else None,
                        indirect=shape == "indirect")
    assert fe.features & V.VHOST_F_LOG_ALL == 0 and fe.protocol_features & P.LOG_SHMFD
    assert lib.pvfs_dirty_is_on(rig.backend.dirty) == 0

    fe.start_dirty_log()
    assert lib.pvfs_dirty_is_on(rig.backend.dirty) == 1
    fe.clear_dirty_log()
    c.forget_pages()
    used = UsedRing(fe)
    data = (files / "big").read_bytes()
    before = rig.device.hotpath.stats()
    got = workload(c)
    after = rig.device.hotpath.stats()
    assert got["big0"] == data[:MiB] and got["big1"] == data[MiB + 100:MiB + 100 + 256 * 1024 + 7]
    assert got["small"] == b"hello, migration\n" and got["link"] == b"small" * 50
    assert {n for n in got["names"] if n.startswith(b"entry-")} == {b"entry-%02d" % i for i in range(40)}
    # The C path served the READs, the WRITE, LOOKUPs and GETATTR; Python READLINK.
    assert after["reads"] - before["reads"] >= 4 and after["writes"] - before["writes"] == 1
    assert after["lookups"] - before["lookups"] >= 2 and after["getattrs"] - before["getattrs"] >= 1
    assert after["passed"] > before["passed"]

    bits = fe.dirty_pages()
    written = c.written | used.written()
    assert len(c.written) > 256             # the 1 MiB READ alone wrote 257 pages (header + data)
    check_log(bits, written, c.allowed | used.allowed())
    assert lib.pvfs_dirty_overflow(rig.backend.dirty) == 0

    # Logging off: requests go on, and not one bit appears.
    fe.stop_dirty_log()
    assert lib.pvfs_dirty_is_on(rig.backend.dirty) == 0
    fe.clear_dirty_log()
    workload(c)
    assert fe.dirty_pages() == set()

    # On again (the same log): logged again.
    fe.set_log_all(True)
    for q in fe.queues:
        fe.set_vring_log(q.index, True)
    c.forget_pages()
    used.mark()
    workload(c)
    check_log(fe.dirty_pages(), c.written | used.written(), c.allowed | used.allowed())


def test_python_serving_everything_is_logged_too(files, monkeypatch):
    """With the C path off (PYVIRTIOFSD_HOTPATH=0) Python serves every request, READ data
    included: the same pages must be marked."""
    monkeypatch.setenv("PYVIRTIOFSD_HOTPATH", "0")
    r = Rig(files, ram_size=64 << 20, queue_size=1024)
    try:
        assert r.device.hotpath.ctx is None
        fe, c = r.fe, r.client
        fe.start_dirty_log()
        fe.clear_dirty_log()
        c.forget_pages()
        used = UsedRing(fe)
        data = (files / "big").read_bytes()
        got = workload(c)
        assert got["big0"] == data[:MiB]
        assert len(c.written) > 256
        check_log(fe.dirty_pages(), c.written | used.written(), c.allowed | used.allowed())
        fe.stop_dirty_log()
        fe.clear_dirty_log()
        workload(c)
        assert fe.dirty_pages() == set()
    finally:
        r.close()


def test_used_ring_is_logged_only_with_vring_f_log(rig):
    fe, c = rig.fe, rig.client
    fe.start_dirty_log()
    for q in fe.queues:
        fe.set_vring_log(q.index, False)       # LOG_ALL on, but rings without the flag
    fe.clear_dirty_log()
    c.forget_pages()
    used = UsedRing(fe)
    c.getattr(ROOT)
    ring_pages = used.written() - c.allowed
    assert ring_pages                           # pages only the used ring has
    bits = fe.dirty_pages()
    check_log(bits, c.written, c.allowed)
    assert not bits & ring_pages
    for q in fe.queues:
        fe.set_vring_log(q.index, True)
    used.mark()
    c.getattr(ROOT)
    assert used.written() - c.allowed == ring_pages
    assert ring_pages <= fe.dirty_pages()


def test_new_log_replaces_the_old_one(rig):
    fe, c = rig.fe, rig.client
    fe.start_dirty_log()
    old_map, old_fd = fe.log_map, fe.log_fd
    fe.log_map, fe.log_fd = None, -1           # keep the old mapping to look at it later
    assert fe.set_log_base() == 0              # a second log (QEMU resizes this way)
    old_map[:] = bytes(len(old_map))
    fe.clear_dirty_log()
    c.forget_pages()
    c.getattr(ROOT)
    assert c.written <= fe.dirty_pages()
    assert old_map[:] == bytes(len(old_map)), "the old log was written after it was replaced"
    old_map.close()
    os.close(old_fd)


def test_hostile_set_log_base_is_refused_and_the_daemon_serves_on(rig):
    fe, c = rig.fe, rig.client
    need = fe.log_size_needed()
    assert need == log_bytes_for((1 << 32) + (32 << 20))
    assert fe.set_log_base(size=need - 1) == 1                 # too small for guest memory
    assert fe.set_log_base(size=0) == 1
    assert fe.request(R.SET_LOG_BASE, struct.pack("<QQ", need, 0), []) == struct.pack("<Q", 1)
    fd = os.memfd_create("short-log")
    try:
        os.ftruncate(fd, need)
        for size, offset in ((need, 4096), (need, 2**64 - 4096), (2**64 - 1, 0), (need, 1 << 40)):
            reply = fe.request(R.SET_LOG_BASE, struct.pack("<QQ", size, offset), [fd])
            assert reply == struct.pack("<Q", 1), (size, offset)
        r, w = os.pipe()                                      # not something to map
        reply = fe.request(R.SET_LOG_BASE, struct.pack("<QQ", need, 0), [r])
        os.close(r), os.close(w)
        assert reply == struct.pack("<Q", 1)
    finally:
        os.close(fd)
    assert lib.pvfs_dirty_log_size(rig.backend.dirty) == 0
    # LOG_ALL without a log: nothing to write into, nothing breaks.
    fe.set_log_all(True)
    c.getattr(ROOT)
    fe.set_log_all(False)
    # SET_LOG_FD is refused with a failure ack, not a hang.
    from pyvirtiofsd.frontend import BackendError
    e = os.eventfd(0)
    with pytest.raises(BackendError):
        fe.request(R.SET_LOG_FD, b"", [e], need_reply=True)
    os.close(e)
    # The session goes on, and a good log still works.
    fe.start_dirty_log()
    fe.clear_dirty_log()
    c.forget_pages()
    c.getattr(ROOT)
    assert c.written and c.written <= fe.dirty_pages()


def test_memory_beyond_the_log_is_counted_not_written(rig):
    """Memory plugged in above the log's reach (before the front-end grows the log): the
    daemon warns, serves a reply written there, and writes no bit past the log's end (the
    log's memfd is exactly its size: a write past it would kill this process)."""
    import mmap
    from pyvirtiofsd import logs
    from pyvirtiofsd.vhost_user.codec import MemRegion, SingleMemRegion

    fe, c = rig.fe, rig.client
    fe.start_dirty_log()
    assert len(fe.log_map) == fe.log_size_needed()
    high = 1 << 40
    fd = os.memfd_create("hotplugged")
    os.ftruncate(fd, 1 << 20)
    try:
        with logs.capture() as events:
            fe.request(R.ADD_MEM_REG, SingleMemRegion(MemRegion(high, 1 << 20, 0x7E0000000000, 0)).pack(),
                       [fd], need_reply=True)
        assert any(e["event"] == "guest memory now reaches past the dirty log" for e in events)
        fe.clear_dirty_log()
        c.forget_pages()
        assert lib.pvfs_dirty_overflow(rig.backend.dirty) == 0
        header = abi.fuse_in_header.build(len=abi.fuse_in_header.size + abi.fuse_getattr_in.size,
                                          opcode=abi.Opcode.FUSE_GETATTR, unique=1000, nodeid=ROOT,
                                          uid=0, gid=0, pid=0, total_extlen=0)
        req = header + abi.fuse_getattr_in.build(getattr_flags=0, dummy=0, fh=0)
        in_gpa = fe.alloc.alloc(len(req))
        fe.ram.write(in_gpa, req)
        used = c.call_chain([(in_gpa, len(req))], [(high + 8192, 4096)])
        assert used == abi.fuse_out_header.size + abi.FUSE_ATTR_OUT_SIZE
        m = mmap.mmap(fd, 1 << 20)
        assert abi.fuse_out_header.parse(m[8192:8192 + 16]).unique == 1000   # served there
        m.close()
        assert lib.pvfs_dirty_overflow(rig.backend.dirty) >= 1          # that page (per write)
        assert fe.dirty_pages() <= UsedRing(fe).allowed()              # the used ring only
    finally:
        os.close(fd)


def test_a_log_truncated_under_the_daemon_costs_marks_not_the_daemon(rig):
    """The log is the front-end's memfd: shrunk to nothing after SET_LOG_BASE, every bit's
    page is gone (SIGBUS on the daemon's atomic OR).  Requests are still answered, the lost
    marks are counted, and a new log works."""
    fe, c = rig.fe, rig.client
    fe.start_dirty_log()
    os.ftruncate(fe.log_fd, 0)                  # (we do not touch our mapping after this)
    assert lib.pvfs_dirty_faults(rig.backend.dirty) == 0
    for _ in range(3):
        assert c.getattr(ROOT).ino
    assert lib.pvfs_dirty_faults(rig.backend.dirty) >= 3
    fe.log_map = None                           # its pages are gone; the fd is dropped below
    assert fe.set_log_base() == 0
    c.forget_pages()
    c.getattr(ROOT)
    assert c.written and c.written <= fe.dirty_pages()


def test_log_marks_the_spec_layout_and_never_past_its_end():
    """The bitmap itself: bit gpa/4096 % 8 of byte gpa/4096/8; bits past the end are not
    written but counted."""
    d = ffi.gc(lib.pvfs_dirty_new(), lib.pvfs_dirty_unref)
    fd = os.memfd_create("log")
    import mmap
    try:
        os.ftruncate(fd, 2 * PAGE)
        m = mmap.mmap(fd, 2 * PAGE)
        m[:] = b"\xee" * (2 * PAGE)                # a guard byte after the log's 16 bytes
        assert lib.pvfs_dirty_set_log(d, fd, 16, PAGE, 0) == 0   # 16 bytes at offset 4096
        lib.pvfs_dirty_log_write(d, 0, 1 << 20)                   # off: nothing
        assert m[PAGE:PAGE + 16] == b"\xee" * 16
        m[PAGE:PAGE + 17] = bytes(16) + b"\xee"
        lib.pvfs_dirty_set_on(d, 1)
        lib.pvfs_dirty_log_write(d, 5 * PAGE + 100, 1)            # page 5
        lib.pvfs_dirty_log_write(d, 9 * PAGE - 1, 2)              # pages 8 and 9
        lib.pvfs_dirty_log_write(d, 100 * PAGE, 40 * PAGE)        # pages 100..139: past 127
        lib.pvfs_dirty_log_write(d, 2**64 - PAGE, PAGE)           # the last page of all
        bits = m[PAGE:PAGE + 16]
        assert bits[0] == 1 << 5 and bits[1] == 0b11
        assert bits[12] == 0xF0 and bits[13:16] == b"\xff\xff\xff"
        assert bits[2:12] == bytes(10)
        assert m[PAGE + 16] == 0xEE and m[:PAGE] == b"\xee" * PAGE   # nothing outside the log
        assert lib.pvfs_dirty_overflow(d) == 12 + 1
        m.close()
    finally:
        os.close(fd)


def test_sandboxed_daemon_logs_under_its_seccomp_filter(start_daemon, files):
    """The real daemon with its default sandbox and seccomp filter (kill): mapping the log,
    replacing it (munmap) and logging must all be allowed."""
    daemon = start_daemon(shared_dir=files)
    fe = VhostUserFrontend(daemon.socket_path, dirty_log=True).connect()
    try:
        c = RecordingClient(fe)
        c.init()
        fe.start_dirty_log()
        assert fe.set_log_base() == 0          # replaced: the first log is unmapped
        fe.clear_dirty_log()
        c.forget_pages()
        used = UsedRing(fe)
        workload(c)
        check_log(fe.dirty_pages(), c.written | used.written(), c.allowed | used.allowed())
        fe.stop_dirty_log()
        fe.clear_dirty_log()
        workload(c)
        assert fe.dirty_pages() == set()
        assert daemon.proc.poll() is None
    finally:
        fe.close()
    log = daemon.log()
    assert "seccomp filter loaded" in log and "action=kill process=daemon" in log
