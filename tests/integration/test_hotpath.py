"""The C hot path (cext/hotpath.c): READ and WRITE served without Python, and every case
where it must leave the request to the Python server so that the answer stays the same.

The device runs in this process on a real directory and a socketpair, so the hot path's
counters (served in C / passed to Python) can be read; the front-end is ours, through real
virtqueues in shared memory.
"""
import errno
import os
import socket
import threading
import time

import pytest
from fdcount import fd_count as _fds

from pyvirtiofsd import _testkit
from pyvirtiofsd._cext import ffi, lib
from pyvirtiofsd.filesystem import Context, FileRange
from pyvirtiofsd.frontend import FuseClient, VhostUserFrontend
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.opslog import OpsRecorder
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import Server, ServerOptions
from pyvirtiofsd.stats import Stats
from pyvirtiofsd.vhost_user.backend import Backend
from pyvirtiofsd.vhost_user.connection import Connection
from pyvirtiofsd.virtiofs import VirtioFsDevice

ROOT = abi.FUSE_ROOT_ID
MiB = 1 << 20


class Rig:
    """A device serving ``directory`` in this process, and a front-end connected to it."""

    def __init__(self, directory, *, fs=None, options=None, dax=None, ops=None, init=True,
                 hot_threads=2, **fe_kw):
        self.fs = fs or PassthroughFs(directory)
        self.server = Server(self.fs, options or ServerOptions(), dax=dax, ops=ops)
        self.device = VirtioFsDevice(self.server, thread_pool_size=4, dax=dax,
                                     hot_threads=hot_threads)
        self.backend = Backend(self.device)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.thread = threading.Thread(target=self.backend.serve, args=(Connection(theirs),),
                                       daemon=True)
        self.thread.start()
        self.fe = VhostUserFrontend(sock=ours, **fe_kw).connect()
        self.client = FuseClient(self.fe)
        if init:
            self.client.init(**({"flags": abi.FUSE_MAP_ALIGNMENT | abi.FUSE_HAS_INODE_DAX}
                                if dax is not None else {}))

    def stats(self):
        return self.device.hotpath.stats()

    def close(self):
        self.fe.close()
        self.thread.join(10)
        served_to_the_end = not self.thread.is_alive()   # the hang-up ends the serve loop
        self.backend.close()
        self.device.close()
        self.fs.close()
        assert served_to_the_end, "Backend.serve still running 10 s after the front-end closed"


@pytest.fixture(autouse=True)
def _c_path_on(monkeypatch):
    """These tests are about the C path: on even when the suite runs with it off
    (scripts/test.sh runs everything a second time with PYVIRTIOFSD_HOTPATH=0)."""
    monkeypatch.setenv("PYVIRTIOFSD_HOTPATH", "1")


@pytest.fixture
def rig_factory(tmp_path):
    made = []

    def make(**kw):
        r = Rig(kw.pop("directory", tmp_path), **kw)
        made.append(r)
        return r

    yield make
    unclosed = []
    for r in made:
        try:
            r.close()
        except AssertionError as e:   # close the others before failing
            unclosed.append(e)
    assert not unclosed, unclosed


def create(client, name=b"f", flags=os.O_RDWR):
    entry, _, opened = client.create(ROOT, name, flags=flags)
    return entry.nodeid, opened.fh


def test_read_and_write_are_served_in_c(rig_factory, tmp_path):
    rig = rig_factory()
    c = rig.client
    node, fh = create(c)
    before = rig.stats()
    payload = os.urandom(MiB)
    assert c.write(node, fh, 4096, payload) == MiB
    assert (tmp_path / "f").read_bytes()[4096:] == payload
    assert c.read(node, fh, 4096, MiB) == payload
    assert c.read(node, fh, 4096 + MiB - 10, 4096) == payload[-10:]   # short at EOF
    assert c.read(node, fh, 10 * MiB, 4096) == b""                    # past EOF
    after = rig.stats()
    assert after["writes"] - before["writes"] == 1
    assert after["reads"] - before["reads"] == 3
    assert after["passed"] == before["passed"]        # nothing of these went to Python
    assert after["bytes"] - before["bytes"] == 2 * MiB + 10


@pytest.mark.parametrize("shape", [dict(segment=4096), dict(segment=512, indirect=True),
                                   dict(indirect=True)])
def test_every_chain_shape_in_c(rig_factory, tmp_path, shape):
    rig = rig_factory()
    node, fh = create(rig.client)
    client = FuseClient(rig.fe, **shape)
    payload = os.urandom(300_000)
    assert client.write(node, fh, 1000, payload) == len(payload)
    assert client.read(node, fh, 1000, len(payload)) == payload
    assert rig.stats()["reads"] >= 1 and rig.stats()["writes"] >= 1


def test_read_before_init_is_eio_and_not_served_in_c(rig_factory, tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    rig = rig_factory(init=False)
    # Pretend a handle exists in C: a READ before INIT still gets Python's EIO.
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    fh = rig.fs.handles.add(fd, ROOT)
    reply = rig.client.call(Opcode.FUSE_READ, ROOT, abi.fuse_read_in.build(fh=fh, size=100), 100)
    assert reply.error == -errno.EIO
    reply = rig.client.call(Opcode.FUSE_WRITE, ROOT, abi.fuse_write_in.build(fh=fh, size=1), 8,
                            data=b"y")
    assert reply.error == -errno.EIO
    assert rig.stats()["reads"] == 0 and rig.stats()["writes"] == 0


def test_destroy_ends_c_service(rig_factory):
    rig = rig_factory()
    node, fh = create(rig.client)
    rig.client.write(node, fh, 0, b"abc")
    rig.client.destroy()
    reply = rig.client.call(Opcode.FUSE_READ, node, abi.fuse_read_in.build(fh=fh, size=3), 3)
    assert reply.error == -errno.EIO


def test_unknown_and_released_handles_get_ebadf(rig_factory):
    rig = rig_factory()
    c = rig.client
    node, fh = create(c)
    c.write(node, fh, 0, b"abc")
    c.release(node, fh)
    for op, args, data in ((Opcode.FUSE_READ, abi.fuse_read_in.build(fh=fh, size=3), b""),
                           (Opcode.FUSE_WRITE, abi.fuse_write_in.build(fh=fh, size=1), b"z"),
                           (Opcode.FUSE_READ, abi.fuse_read_in.build(fh=12345, size=3), b"")):
        assert c.call(op, node, args, 16, data=data).error == -errno.EBADF


def test_readonly_server_keeps_write_in_python(rig_factory, tmp_path):
    (tmp_path / "f").write_bytes(b"data")
    rig = rig_factory(options=ServerOptions(readonly=True))
    assert rig.device.hotpath.ops & (lib.PVFS_HOT_READ | lib.PVFS_HOT_WRITE) == lib.PVFS_HOT_READ
    c = rig.client
    node = c.lookup(ROOT, b"f")[0].nodeid
    fh = c.open(node, os.O_RDONLY).fh
    reply = c.call(Opcode.FUSE_WRITE, node, abi.fuse_write_in.build(fh=fh, size=1), 8, data=b"z")
    assert reply.error == -errno.EROFS
    assert c.read(node, fh, 0, 4) == b"data"
    assert rig.stats()["writes"] == 0 and rig.stats()["reads"] == 1
    assert (tmp_path / "f").read_bytes() == b"data"


def test_readonly_file_system_keeps_write_in_python(rig_factory, tmp_path):
    rig = rig_factory(fs=PassthroughFs(tmp_path, readonly=True))
    assert rig.device.hotpath.ops & (lib.PVFS_HOT_READ | lib.PVFS_HOT_WRITE) == lib.PVFS_HOT_READ


def test_dax_window_keeps_write_in_python(rig_factory, tmp_path):
    from pyvirtiofsd.dax import DaxWindow

    fs = PassthroughFs(tmp_path)
    dax = DaxWindow(fs, 64 * MiB)
    rig = rig_factory(fs=fs, dax=dax, options=ServerOptions(map_alignment=dax.map_alignment))
    assert rig.device.hotpath.ops & (lib.PVFS_HOT_READ | lib.PVFS_HOT_WRITE) == lib.PVFS_HOT_READ
    node, fh = create(rig.client)
    assert rig.client.write(node, fh, 0, b"through python") == 14
    assert rig.client.read(node, fh, 0, 14) == b"through python"
    assert rig.stats()["writes"] == 0 and rig.stats()["reads"] == 1


def test_ops_recorder_keeps_the_hot_path_on(rig_factory, tmp_path):
    """Statistics no longer switch C off: C counts what it serves into the same Stats
    (test_hotpath_records.py has the details)."""
    stats = Stats()
    rig = rig_factory(ops=OpsRecorder(stats=stats))
    assert rig.device.hotpath.ctx is not None
    node, fh = create(rig.client)
    rig.client.write(node, fh, 0, b"recorded")
    assert rig.client.read(node, fh, 0, 8) == b"recorded"
    assert rig.stats()["reads"] == 1 and rig.stats()["writes"] == 1
    seen = stats.snapshot()     # counted before the reply went out: no waiting
    assert seen["READ"].count == 1 and seen["WRITE"].count == 1
    assert seen["READ"].bytes == 8 and seen["WRITE"].bytes == 8


def test_environment_switch_turns_the_hot_path_off(rig_factory, monkeypatch):
    monkeypatch.setenv("PYVIRTIOFSD_HOTPATH", "0")
    rig = rig_factory()
    assert rig.device.hotpath.ctx is None
    node, fh = create(rig.client)
    assert rig.client.write(node, fh, 0, b"abc") == 3


class CountingReads(PassthroughFs):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.reads = 0

    def read(self, ctx, inode, fh, offset, size, flags) -> FileRange:
        self.reads += 1
        return super().read(ctx, inode, fh, offset, size, flags)


def test_a_subclass_that_overrides_read_gets_every_read(rig_factory, tmp_path):
    fs = CountingReads(tmp_path)
    rig = rig_factory(fs=fs)
    assert rig.device.hotpath.ops & (lib.PVFS_HOT_READ | lib.PVFS_HOT_WRITE) == lib.PVFS_HOT_WRITE
    node, fh = create(rig.client)
    rig.client.write(node, fh, 0, b"hello")
    assert rig.client.read(node, fh, 0, 5) == b"hello"
    assert fs.reads == 1 and rig.stats()["reads"] == 0


def test_kill_suidgid_write_goes_to_python(rig_factory, tmp_path):
    rig = rig_factory()
    node, fh = create(rig.client)
    args = abi.fuse_write_in.build(fh=fh, size=4, write_flags=abi.FUSE_WRITE_KILL_SUIDGID)
    body = rig.client.check(Opcode.FUSE_WRITE, node, args, abi.fuse_write_out.size, data=b"kill")
    assert abi.fuse_write_out.parse(body).size == 4
    assert rig.stats()["writes"] == 0
    assert (tmp_path / "f").read_bytes() == b"kill"


def test_o_append_handle_goes_to_python(rig_factory, tmp_path):
    (tmp_path / "log").write_bytes(b"0123")
    rig = rig_factory()
    c = rig.client
    node = c.lookup(ROOT, b"log")[0].nodeid
    fh = c.open(node, os.O_WRONLY | os.O_APPEND).fh
    assert c.write(node, fh, 0, b"tail") == 4
    assert rig.stats()["writes"] == 0
    assert (tmp_path / "log").read_bytes() == b"0123tail"   # what pwrite does on O_APPEND


def test_malformed_requests_get_pythons_answer(rig_factory):
    rig = rig_factory()
    c = rig.client
    node, fh = create(c)
    # fuse_in_header.len beyond what the chain holds: EINVAL from the Python server.
    reply = c.call(Opcode.FUSE_READ, node, abi.fuse_read_in.build(fh=fh, size=8), 8, raw_len=4096)
    assert reply.error == -errno.EINVAL
    # A WRITE whose size is larger than the payload it carries.
    reply = c.call(Opcode.FUSE_WRITE, node, abi.fuse_write_in.build(fh=fh, size=100), 8, data=b"x")
    assert reply.error == -errno.EINVAL
    assert rig.stats()["writes"] == 0 and rig.stats()["reads"] == 0


def test_reply_area_too_small_for_write_out_goes_to_python(rig_factory):
    rig = rig_factory()
    node, fh = create(rig.client)
    reply = rig.client.call(Opcode.FUSE_WRITE, node, abi.fuse_write_in.build(fh=fh, size=1), 0,
                            data=b"x")
    assert reply.error == -errno.EIO     # the server's "reply does not fit"
    assert rig.stats()["writes"] == 0


def test_release_racing_reads_never_closes_the_fd_under_them(rig_factory, tmp_path):
    """Reads in flight while RELEASE runs: each gets the data or EBADF, never another
    file's bytes, and the fd is closed once the last of them is done."""
    data = os.urandom(256 * 1024)
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "other").write_bytes(b"\0" * len(data))
    rig = rig_factory(queue_size=256)
    c = rig.client
    node = c.lookup(ROOT, b"f")[0].nodeid
    other = c.lookup(ROOT, b"other")[0].nodeid
    for _ in range(20):
        base = _fds()
        fh = c.open(node, os.O_RDONLY).fh
        pending = [c.submit(Opcode.FUSE_READ, node, abi.fuse_read_in.build(fh=fh, size=len(data)),
                            len(data)) for _ in range(24)]
        release = c.submit(Opcode.FUSE_RELEASE, node, abi.fuse_release_in.build(fh=fh))
        # An open right after may reuse the fd number: its data must never show up above.
        fh2 = c.open(other, os.O_RDONLY).fh
        for p in pending:
            reply = c.reap(p)
            assert reply.error in (0, -errno.EBADF)
            if not reply.error:
                assert reply.body == data
        assert c.reap(release).error == 0
        c.release(other, fh2)
        assert _fds() == base
    assert rig.stats()["reads"] > 0


def test_many_reads_in_flight_on_several_c_threads(rig_factory, tmp_path):
    data = os.urandom(4 * MiB)
    (tmp_path / "big").write_bytes(data)
    rig = rig_factory(hot_threads=3, ram_size=128 * MiB)
    c = rig.client
    node = c.lookup(ROOT, b"big")[0].nodeid
    fh = c.open(node, os.O_RDONLY).fh
    chunk = 256 * 1024
    pending = [(off, c.submit(Opcode.FUSE_READ, node,
                              abi.fuse_read_in.build(fh=fh, offset=off, size=chunk), chunk))
               for off in range(0, len(data), chunk)]
    for off, p in pending:
        assert c.reap(p).check() == data[off:off + chunk]
    assert rig.stats()["reads"] == len(pending)
    names = {t.name for t in threading.enumerate()}
    assert {"vq1", "vq1.1", "vq1.2"} <= names


class WhereServed(PassthroughFs):
    """Records which thread served getattr and fsync."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.threads = {}

    def getattr(self, ctx, inode, fh):
        self.threads["getattr"] = threading.current_thread().name
        return super().getattr(ctx, inode, fh)

    def fsync(self, ctx, inode, fh, datasync):
        self.threads["fsync"] = threading.current_thread().name
        return super().fsync(ctx, inode, fh, datasync)


def test_quick_opcodes_are_served_on_the_queue_thread_blocking_ones_by_the_pool(rig_factory,
                                                                                tmp_path):
    fs = WhereServed(tmp_path)
    rig = rig_factory(fs=fs)
    node, fh = create(rig.client)
    rig.client.getattr(node)
    rig.client.fsync(node, fh)
    assert fs.threads["getattr"].startswith("vq1")
    assert fs.threads["fsync"].startswith("fuse-worker-")


def test_a_disabled_ring_is_not_served_until_enabled_again(rig_factory):
    """SET_VRING_ENABLE 0 pauses every C thread of the queue (the followers too)."""
    from pyvirtiofsd.vhost_user.codec import VringState
    from pyvirtiofsd.vhost_user.protocol import FrontendReq as R

    rig = rig_factory(hot_threads=3)
    c = rig.client
    node, fh = create(c)
    c.write(node, fh, 0, b"paused")
    rig.fe.request(R.SET_VRING_ENABLE, VringState(1, 0).pack(), need_reply=True)
    pending = [c.submit(Opcode.FUSE_READ, node, abi.fuse_read_in.build(fh=fh, size=6), 6)
               for _ in range(4)]
    with pytest.raises(TimeoutError):
        c.reap(pending[0], timeout=0.3)
    rig.fe.request(R.SET_VRING_ENABLE, VringState(1, 1).pack(), need_reply=True)
    for p in pending:
        assert c.reap(p).check() == b"paused"


class SlowWrites:
    """A host FUSE file system (test_faults.HostFuse) whose file ``slow`` takes writes only
    once ``unblock`` is set."""

    def __new__(cls):
        from test_faults import FaultyFs

        class Fs(FaultyFs):
            def __init__(self):
                super().__init__()
                self.write_started = threading.Event()

            def write(self, ctx, inode, fh, offset, data, flags, kill_priv):
                self.write_started.set()
                if not self.unblock.wait(60):
                    raise OSError(errno.ETIMEDOUT, "never released")
                return len(data)

        return Fs()


def test_a_small_write_stuck_in_the_host_fs_does_not_stall_the_queue(rig_factory, tmp_path):
    """The leader does small writes itself; stuck in one, it loses the ring to a follower
    (after PVFS_HOT_STALL_NS) and the queue goes on being served."""
    from test_faults import HostFuse

    fs = SlowWrites()
    mnt = tmp_path / "faulty"
    mnt.mkdir()
    host = HostFuse(fs, str(mnt))
    try:
        rig = rig_factory()
        c = rig.client
        d = c.lookup(ROOT, b"faulty")[0].nodeid
        node = c.lookup(d, b"slow")[0].nodeid
        fh = c.open(node, os.O_WRONLY).fh
        blocked = c.submit(Opcode.FUSE_WRITE, node, abi.fuse_write_in.build(fh=fh, size=100),
                           abi.fuse_write_out.size, data=b"w" * 100)
        assert fs.write_started.wait(10)
        for _ in range(10):
            assert c.getattr(ROOT).ino            # served meanwhile
        assert blocked.reply is None
        fs.unblock.set()
        assert abi.fuse_write_out.parse(c.reap(blocked).check()).size == 100
        assert rig.stats()["writes"] == 1
    finally:
        fs.unblock.set()
        host.close()


def test_deferred_completions_interrupt_once_on_flush():
    """pvfs_req_complete_deferred pushes used entries at once but leaves the interrupt to
    pvfs_vq_flush_signal: a batch costs the driver one interrupt (EVENT_IDX off here, so
    every non-deferred completion would signal)."""
    from pyvirtiofsd.frontend.memory import Allocator, GuestRAM
    from pyvirtiofsd.frontend.virtqueue import DriverQueue
    from pyvirtiofsd.vhost_user.memory import GuestMemory
    from pyvirtiofsd.vhost_user.vring import Vring

    ram = GuestRAM(1 << 20)
    drv = DriverQueue(1, 8, ram, Allocator(0, 1 << 20), event_idx=False)
    mem = GuestMemory()
    mem.set_table(ram.mem_regions(), [ram.fd])
    vring = Vring(1)
    vring.set_num(8)
    vring.set_mem(mem.table)
    vring.set_addr(*drv.addr_uva())
    call = os.eventfd(0, os.EFD_NONBLOCK)
    vring.set_call_fd(os.dup(call))
    assert lib.pvfs_vq_start(vring.vq) == 0
    p = ffi.new("struct pvfs_req **")
    try:
        for _ in range(3):
            gpa = drv.alloc.alloc(64)
            drv.add([], [(gpa, 64)])
        for _ in range(3):
            assert lib.pvfs_vq_pop(vring.vq, p) == 1
            lib.pvfs_req_complete_deferred(p[0], 0)
        assert _testkit.lib.pvfs_drv_used_idx(drv._drv) == 3  # visible to the driver at once
        with pytest.raises(BlockingIOError):
            os.eventfd_read(call)                             # ... but no interrupt yet
        lib.pvfs_vq_flush_signal(vring.vq)
        assert os.eventfd_read(call) == 1
        lib.pvfs_vq_flush_signal(vring.vq)                    # nothing deferred: no interrupt
        with pytest.raises(BlockingIOError):
            os.eventfd_read(call)
    finally:
        vring.close()
        os.close(call)
        drv.close()
        mem.close()
        ram.close()


def test_getattr_in_c_answers_what_python_answers(rig_factory, tmp_path):
    """The C GETATTR (fstat of the inode's O_PATH fd) must be byte for byte what the
    server would have sent, blksize clamp included; forgotten inodes go to Python."""
    import stat as stat_mod
    (tmp_path / "f").write_bytes(b"x" * 12345)
    os.mkfifo(tmp_path / "fifo")
    rig = rig_factory()
    assert rig.device.hotpath.ops & lib.PVFS_HOT_GETATTR
    c = rig.client
    for name in (b"f", b"fifo"):
        head, attr_lookup = c.lookup(ROOT, name)
        node = head.nodeid
        before = rig.stats()["getattrs"]
        attr = c.getattr(node)
        assert rig.stats()["getattrs"] == before + 1          # served in C
        st = os.lstat(tmp_path / name.decode())
        assert (attr.ino, attr.size, attr.mode, attr.nlink, attr.uid, attr.gid) == \
            (st.st_ino, st.st_size, st.st_mode, st.st_nlink, st.st_uid, st.st_gid)
        assert (attr.mtime, attr.mtimensec) == divmod(st.st_mtime_ns, 10**9)
        assert attr.blksize == 4096 and attr.flags == 0
        assert attr == attr_lookup._replace(atime=attr.atime, atimensec=attr.atimensec)
        c.forget(node, 1)
    assert stat_mod.S_ISFIFO(attr.mode)
    c.getattr(ROOT)                                              # let the forgets land
    before = rig.stats()["getattrs"]
    reply = c.call(Opcode.FUSE_GETATTR, node, abi.fuse_getattr_in.build(), abi.FUSE_ATTR_OUT_SIZE)
    assert reply.error == -errno.EBADF                           # Python: unknown nodeid
    assert rig.stats()["getattrs"] == before


def test_getattr_stays_in_python_with_id_translation(rig_factory, tmp_path):
    from pyvirtiofsd.passthrough.idmap import IdMap
    rig = rig_factory(options=ServerOptions(uid_map=IdMap(["map:0:1000:1"], "uid")))
    assert not rig.device.hotpath.ops & lib.PVFS_HOT_GETATTR
    assert not rig.device.hotpath.ops & lib.PVFS_HOT_LOOKUP


def test_lookup_in_c_answers_what_python_answers(rig_factory, tmp_path):
    """A LOOKUP is answered in C -- of an inode the guest holds already, and (without file
    handles) of a new one, which C opens and registers in the store -- with the bytes the
    server would have sent; the lookups it counts are the guest's to FORGET."""
    (tmp_path / "f").write_bytes(b"x" * 777)
    os.link(tmp_path / "f", tmp_path / "hard")
    (tmp_path / "g").write_bytes(b"y" * 5)
    rig = rig_factory()
    assert rig.device.hotpath.ops & lib.PVFS_HOT_LOOKUP
    c, inodes = rig.client, rig.fs.inodes
    served = lambda: rig.stats()["lookups"]                     # noqa: E731
    # the Python answer for a new inode, with LOOKUP in C off
    ctx, ops = rig.device.hotpath.ctx, rig.device.hotpath.ops
    lib.pvfs_hot_set_ops(ctx, ops & ~lib.PVFS_HOT_LOOKUP)
    py_g = c.check(Opcode.FUSE_LOOKUP, ROOT, b"g\0", abi.FUSE_ENTRY_OUT_SIZE)
    assert served() == 0
    lib.pvfs_hot_set_ops(ctx, ops)
    first = c.check(Opcode.FUSE_LOOKUP, ROOT, b"f\0", abi.FUSE_ENTRY_OUT_SIZE)
    assert served() == 1                                         # a new inode, in C
    node = c.parse_entry(first)[0].nodeid
    assert node > c.parse_entry(py_g)[0].nodeid                  # one nodeid counter
    again = c.check(Opcode.FUSE_LOOKUP, ROOT, b"f\0", abi.FUSE_ENTRY_OUT_SIZE)
    assert served() == 2
    # identical but for atime (a read may not touch it, but the host is free to)
    cut = abi.fuse_entry_out_head.size + 24
    assert again[:cut] == first[:cut] and again[cut + 8:] == first[cut + 8:]
    head, attr = c.parse_entry(again)
    assert head.nodeid == node and attr.blksize == 4096 and attr.size == 777
    # C's entry for g (held now) is what Python sent for it
    c_g = c.check(Opcode.FUSE_LOOKUP, ROOT, b"g\0", abi.FUSE_ENTRY_OUT_SIZE)
    assert c_g[:cut] == py_g[:cut] and c_g[cut + 8:] == py_g[cut + 8:]
    assert c.lookup(ROOT, b"hard")[0].nodeid == node              # a hard link: same inode
    assert served() == 4
    assert inodes.lookup_count(node) == 3
    c.forget(node, 2)
    c.getattr(ROOT)
    assert inodes.lookup_count(node) == 1 and c.getattr(node).size == 777
    c.forget(node, 1)
    c.getattr(ROOT)
    assert inodes.lookup_count(node) == 0
    assert c.call(Opcode.FUSE_GETATTR, node, abi.fuse_getattr_in.build(),
                  abi.FUSE_ATTR_OUT_SIZE).error == -errno.EBADF
    # forgotten: the next LOOKUP registers it again, with a new nodeid
    assert c.lookup(ROOT, b"f")[0].nodeid not in (node, 0)


def test_inodes_registered_in_c_are_the_stores(rig_factory, tmp_path):
    """Inodes C registers are the store's like any other: Python finds them by nodeid (OPEN,
    FORGET) and by identity (its own LOOKUP of the same file), and the session's end drops
    them all."""
    for n in "abc":
        (tmp_path / n).write_bytes(n.encode())
    rig = rig_factory()
    c, inodes = rig.client, rig.fs.inodes
    base_fds = inodes.open_fds()
    a = c.lookup(ROOT, b"a")[0].nodeid
    b = c.lookup(ROOT, b"b")[0].nodeid
    cc = c.lookup(ROOT, b"c")[0].nodeid
    assert rig.stats()["lookups"] == 3
    assert len(inodes) == 4 and inodes.open_fds() == base_fds + 3
    # by nodeid: an OPEN (Python) of a
    fh = c.open(a, os.O_RDONLY).fh
    assert c.read(a, fh, 0, 10) == b"a"
    c.release(a, fh)
    # by identity: Python's own lookup of b (through a hard link name it resolves itself)
    os.link(tmp_path / "b", tmp_path / "b2")
    assert rig.fs.lookup(Context(0, 0, 0), ROOT, b"b2").nodeid == b
    assert inodes.lookup_count(b) == 2
    # FORGET of one only C served
    c.forget(cc, 1)
    c.getattr(ROOT)
    assert len(inodes) == 3
    # session end: everything but the root goes
    c.lookup(ROOT, b"c")
    rig.server.reset()
    assert len(inodes) == 1 and inodes.open_fds() == base_fds


def test_readdirplus_in_c_answers_what_python_answers(rig_factory, tmp_path):
    """A whole listing in C: the entries, offsets and attributes Python gives (but for
    atime), lookups counted in the store for every entry but the dots, new inodes
    registered -- also across replies that end mid-directory, of a size C cuts nothing
    from."""
    names = [f"file-{i}" + "x" * (i % 40) for i in range(300)] + ["d", "l"]
    for n in names[:-2]:
        (tmp_path / n).write_bytes(n.encode())
    (tmp_path / "d").mkdir()
    os.symlink("file-0", tmp_path / "l")
    rig = rig_factory()
    c, ctx, ops = rig.client, rig.device.hotpath.ctx, rig.device.hotpath.ops
    assert ops & 1 << Opcode.FUSE_READDIRPLUS
    lib.pvfs_hot_set_ops(ctx, ops & ~(1 << Opcode.FUSE_READDIRPLUS))
    py = c.listdir(ROOT, plus=True)
    assert rig.stats()["readdirpluses"] == 0
    lib.pvfs_hot_set_ops(ctx, ops)
    in_c = c.listdir(ROOT, plus=True)
    served = rig.stats()["readdirpluses"]
    assert served > len(names) * 100 // 4096                     # every reply in C

    def comparable(listing):
        # atime may move (the host is free to); the rest must be equal
        return [(ino, off, typ, name, e[0], e[1]._replace(atime=0, atimensec=0))
                for ino, off, typ, name, e in listing]
    assert comparable(in_c) == comparable(py)
    assert sorted(n for _, _, _, n, _ in in_c) == sorted([b".", b".."] + [n.encode() for n in names])
    for _, _, _, name, (head, attr) in in_c:
        if name in (b".", b".."):
            assert head.nodeid == 0
        else:
            assert rig.fs.inodes.lookup_count(head.nodeid) == 2    # one per listing
            assert attr.blksize == 4096
    # What C leaves to Python: a reply too small for one entry (EINVAL), an unknown handle
    fh = c.opendir(ROOT).fh
    small = c.call(Opcode.FUSE_READDIRPLUS, ROOT, abi.fuse_read_in.build(fh=fh, size=100), 100)
    assert small.error == -errno.EINVAL
    bad = c.call(Opcode.FUSE_READDIRPLUS, ROOT, abi.fuse_read_in.build(fh=fh + 99, size=4096),
                 4096)
    assert bad.error == -errno.EBADF
    assert rig.stats()["readdirpluses"] == served
    c.release(ROOT, fh, dir=True)


def test_readdir_in_c_answers_what_python_answers(rig_factory, tmp_path):
    """Plain READDIR in C: the entries (dots included), offsets and types Python gives,
    across replies that end mid-directory, no lookup counted, and what C leaves to Python
    answered by Python."""
    names = [f"n{i}" + "y" * (i % 50) for i in range(400)]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    rig = rig_factory()
    c, ctx, ops = rig.client, rig.device.hotpath.ctx, rig.device.hotpath.ops
    assert ops & 1 << Opcode.FUSE_READDIR
    lib.pvfs_hot_set_ops(ctx, ops & ~(1 << Opcode.FUSE_READDIR))
    py = c.listdir(ROOT, size=1024)
    assert rig.stats()["readdirs"] == 0
    lib.pvfs_hot_set_ops(ctx, ops)
    inodes = len(rig.fs.inodes)
    in_c = c.listdir(ROOT, size=1024)
    served = rig.stats()["readdirs"]
    assert served > len(names) * 24 // 1024                      # every reply in C
    assert in_c == py
    assert sorted(e[3] for e in in_c) == sorted([b".", b".."] + [n.encode() for n in names])
    assert len(rig.fs.inodes) == inodes                          # nothing looked up
    fh = c.opendir(ROOT).fh
    small = c.call(Opcode.FUSE_READDIR, ROOT, abi.fuse_read_in.build(fh=fh, size=20), 20)
    assert small.error == -errno.EINVAL                          # not one entry fits
    bad = c.call(Opcode.FUSE_READDIR, ROOT, abi.fuse_read_in.build(fh=fh + 99, size=4096), 4096)
    assert bad.error == -errno.EBADF
    assert rig.stats()["readdirs"] == served
    c.release(ROOT, fh, dir=True)


def test_lookup_cases_c_leaves_to_python(rig_factory, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"")
    rig = rig_factory()
    c = rig.client
    d = c.lookup(ROOT, b"d")[0].nodeid
    c.lookup(d, b"f")
    base = rig.stats()["lookups"]
    assert c.lookup(d, b".")[0].nodeid == d                      # dots: Python
    assert c.lookup(d, b"..")[0].nodeid == ROOT
    for bad in (b"f\0junk\0", b"f", b"d/f\0", b"\0"):              # malformed: Python refuses
        assert c.call(Opcode.FUSE_LOOKUP, ROOT, bad, abi.FUSE_ENTRY_OUT_SIZE).error == -errno.EINVAL
    assert c.call(Opcode.FUSE_LOOKUP, 999, b"f\0", abi.FUSE_ENTRY_OUT_SIZE).error == -errno.EBADF
    short = c.call(Opcode.FUSE_LOOKUP, d, b"f\0", 16 + 40)       # no room for the entry
    assert short.error == -errno.EIO
    assert rig.stats()["lookups"] == base
    assert c.lookup(d, b"f")[1].size == 0 and rig.stats()["lookups"] == base + 1


def test_a_name_that_is_not_there_is_answered_in_c(rig_factory, tmp_path):
    """A negative LOOKUP (what every create and every probe for a file sends first) gets
    Python's ENOENT from C, and leaves no inode or fd behind."""
    (tmp_path / "d").mkdir()
    rig = rig_factory()
    c = rig.client
    d = c.lookup(ROOT, b"d")[0].nodeid
    base, inodes, fds = rig.stats()["lookups"], len(rig.fs.inodes), rig.fs.inodes.open_fds()
    for name in (b"nope", b"x" * 255):
        missing = c.call(Opcode.FUSE_LOOKUP, d, name + b"\0", abi.FUSE_ENTRY_OUT_SIZE)
        assert missing.error == -errno.ENOENT
    assert rig.stats()["lookups"] == base + 2
    assert len(rig.fs.inodes) == inodes and rig.fs.inodes.open_fds() == fds
    (tmp_path / "d" / "nope").write_bytes(b"now")            # made on the host: found at once
    assert c.lookup(d, b"nope")[1].size == 3


def test_lookups_in_c_race_forgets_without_losing_count(rig_factory, tmp_path):
    """Lookups counted in C and FORGETs settled in Python, concurrently on two queues of
    one device: every nodeid handed out stays valid until the guest forgets it, and when
    all are forgotten the inode (and its fd) is gone."""
    (tmp_path / "f").write_bytes(b"data")
    rig = rig_factory()
    c = rig.client
    fds_before = rig.fs.inodes.open_fds()
    errors = []

    def worker():
        try:
            for _ in range(300):
                node = c.lookup(ROOT, b"f")[0].nodeid
                assert c.getattr(node).size == 4
                c.forget(node, 1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), f"{t.name} still running after 60 s"
    assert not errors, errors[:3]
    c.getattr(ROOT)
    assert rig.stats()["lookups"] > 0
    assert len(rig.fs.inodes) == 1 and rig.fs.inodes.open_fds() == fds_before


def test_python_and_c_registering_the_same_new_inodes_race(rig_factory, tmp_path):
    """C LOOKUPs (queue threads) and Python lookups (here, directly) of the same new files
    at once: one nodeid per file, every lookup counted once, nothing left after FORGET."""
    names = [f"n{i}".encode() for i in range(40)]
    for n in names:
        (tmp_path / n.decode()).write_bytes(b"")
    rig = rig_factory()
    c, fs = rig.client, rig.fs
    fds_before = fs.inodes.open_fds()
    got: dict[bytes, set] = {n: set() for n in names}
    errors = []

    def c_side():
        try:
            for n in names:
                got[n].add(c.lookup(ROOT, n)[0].nodeid)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def py_side():
        try:
            for n in reversed(names):
                got[n].add(fs.lookup(Context(0, 0, 0), ROOT, n).nodeid)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (c_side, py_side, c_side, py_side)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), f"{t.name} still running after 60 s"
    assert not errors, errors[:3]
    assert rig.stats()["lookups"] > 0
    for n in names:
        assert len(got[n]) == 1, (n, got[n])              # one nodeid per file
        node = next(iter(got[n]))
        assert fs.inodes.lookup_count(node) == 4
        c.forget(node, 4)
    c.getattr(ROOT)
    assert len(fs.inodes) == 1 and fs.inodes.open_fds() == fds_before
