"""DAX through our front-end: the daemon maps host file ranges into a real cache window
(MAP_FIXED|MAP_SHARED of the fd it sends over the backend channel), and the window is
coherent with the host page cache — real mmaps, real files, no mocks."""
import errno
import faulthandler
import os
import random
import signal
import stat

import pytest

from pyvirtiofsd.frontend import FuseClient
from pyvirtiofsd.frontend.dax import WINDOW_GPA
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode

ROOT = abi.FUSE_ROOT_ID
MiB = 1 << 20
R = abi.FUSE_SETUPMAPPING_FLAG_READ
RW = R | abi.FUSE_SETUPMAPPING_FLAG_WRITE
DAX_INIT = abi.FUSE_MAP_ALIGNMENT | abi.FUSE_HAS_INODE_DAX


def dax_client(start_daemon, connect, *args, window="64M", frontend=None, **fe_kw):
    daemon = start_daemon("--cache-size", window, *args, **({} if frontend is None else frontend))
    client = connect(daemon, init=False, dax=True, **fe_kw)
    client.init(flags=DAX_INIT)
    client.daemon = daemon
    return client


@pytest.fixture
def dax(start_daemon, connect):
    return dax_client(start_daemon, connect)


def make_file(shared, name, size):
    data = os.urandom(size)
    (shared / name).write_bytes(data)
    return data


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_init_offers_map_alignment_and_inode_dax(dax):
    out = dax.init_out
    assert out.flags & abi.FUSE_MAP_ALIGNMENT and out.map_alignment == 12
    assert (out.flags2 << 32) & abi.FUSE_HAS_INODE_DAX
    assert dax.fe.window.size == 64 * MiB


def test_window_bytes_equal_file_bytes_after_setupmapping(dax, shared):
    data = make_file(shared, "f", 4 * MiB)
    e, _ = dax.lookup(ROOT, b"f")
    dax.setupmapping(e.nodeid, 2 * MiB, 2 * MiB, 6 * MiB, R)
    assert dax.fe.window.read(6 * MiB, 2 * MiB) == data[2 * MiB:]


def test_host_pwrite_is_visible_in_the_window_at_once(dax, shared):
    make_file(shared, "f", 2 * MiB)
    e, _ = dax.lookup(ROOT, b"f")
    dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    fd = os.open(shared / "f", os.O_WRONLY)
    os.pwrite(fd, b"host wrote this", 12345)
    os.close(fd)
    assert dax.fe.window.read(12345, 15) == b"host wrote this"


def test_window_store_is_visible_to_host_pread_and_persists(dax, shared):
    make_file(shared, "f", 2 * MiB)
    e, _ = dax.lookup(ROOT, b"f")
    fh = dax.open(e.nodeid, os.O_RDWR).fh
    dax.setupmapping(e.nodeid, 0, 2 * MiB, 4 * MiB, RW)
    dax.fe.window.write(4 * MiB + 777, b"guest store")
    fd = os.open(shared / "f", os.O_RDONLY)
    assert os.pread(fd, 11, 777) == b"guest store"
    dax.removemapping([(4 * MiB, 2 * MiB)])
    dax.release(e.nodeid, fh)
    assert os.pread(fd, 11, 777) == b"guest store"
    os.close(fd)
    with pytest.raises(OSError):
        dax.fe.window.read(4 * MiB, 1)  # unmapped again


def test_two_front_ends_on_two_daemons_see_each_others_stores(start_daemon, connect, shared):
    make_file(shared, "shared.bin", 2 * MiB)
    a = dax_client(start_daemon, connect, frontend=dict(socket_name="a.sock"))
    b = dax_client(start_daemon, connect, frontend=dict(socket_name="b.sock"))
    ea, _ = a.lookup(ROOT, b"shared.bin")
    eb, _ = b.lookup(ROOT, b"shared.bin")
    a.setupmapping(ea.nodeid, 0, 2 * MiB, 0, RW)
    b.setupmapping(eb.nodeid, 0, 2 * MiB, 10 * MiB, RW)
    a.fe.window.write(100, b"from guest A")
    assert b.fe.window.read(10 * MiB + 100, 12) == b"from guest A"
    b.fe.window.write(10 * MiB + 5000, b"from guest B")
    assert a.fe.window.read(5000, 12) == b"from guest B"


def test_read_only_mapping_refuses_stores(dax, shared):
    (shared / "f").write_bytes(b"B" * 2 * MiB)
    e, _ = dax.lookup(ROOT, b"f")
    dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    with pytest.raises(OSError) as err:
        dax.fe.window.write(0, b"x")
    assert err.value.errno == errno.EFAULT
    # And a real CPU store faults: do it in a child so only the child dies.
    pid = os.fork()
    if pid == 0:
        faulthandler.disable()  # the fault is the point; don't print a traceback for it
        dax.fe.window.view(0, 1)[0] = 0x41
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    assert dax.fe.window.read(0, 1) == (shared / "f").read_bytes()[:1]  # the store did not land
    # Upgrading the same range to read-write (what Linux does on a write fault) works.
    dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, RW)
    dax.fe.window.write(0, b"now writable")
    assert (shared / "f").read_bytes()[:12] == b"now writable"


@pytest.mark.parametrize("what,args", [
    ("misaligned foffset", dict(foffset=100, length=2 * MiB, moffset=0)),
    ("misaligned moffset", dict(foffset=0, length=2 * MiB, moffset=4096 + 1)),
    ("misaligned length", dict(foffset=0, length=MiB + 1, moffset=0)),
    ("zero length", dict(foffset=0, length=0, moffset=0)),
    ("past the window end", dict(foffset=0, length=4 * MiB, moffset=62 * MiB)),
    ("outside the window", dict(foffset=0, length=2 * MiB, moffset=64 * MiB)),
    ("offset overflow", dict(foffset=0, length=2 * MiB, moffset=2**64 - 2 * MiB)),
    ("past end of file", dict(foffset=4 * MiB, length=2 * MiB, moffset=0)),
])
def test_bad_setupmapping_gets_an_errno_and_changes_nothing(dax, shared, what, args):
    make_file(shared, "f", 2 * MiB)
    e, _ = dax.lookup(ROOT, b"f")
    dax.setupmapping(e.nodeid, 0, 2 * MiB, 20 * MiB, R)
    before = (dict(dax.fe.window.mappings), list(dax.fe.channel_server.requests))
    with pytest.raises(OSError) as err:
        dax.setupmapping(e.nodeid, args["foffset"], args["length"], args["moffset"], R)
    assert err.value.errno == errno.EINVAL, what
    assert (dict(dax.fe.window.mappings), list(dax.fe.channel_server.requests)) == before


@pytest.mark.parametrize("ranges", [[(0, 0)], [(64 * MiB, 2 * MiB)], [(3, 2 * MiB)]])
def test_bad_removemapping_gets_einval(dax, ranges):
    with pytest.raises(OSError) as err:
        dax.removemapping(ranges)
    assert err.value.errno == errno.EINVAL


def test_setup_on_non_regular_file_and_unknown_inode(dax, shared):
    (shared / "d").mkdir()
    e, _ = dax.lookup(ROOT, b"d")
    with pytest.raises(OSError):
        dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    with pytest.raises(OSError):
        dax.setupmapping(987654, 0, 2 * MiB, 0, R)
    assert dax.fe.window.mappings == {}


def test_overlap_replaces_and_splits(dax, shared):
    a = make_file(shared, "a", 8 * MiB)
    b = make_file(shared, "b", 8 * MiB)
    ea, _ = dax.lookup(ROOT, b"a")
    eb, _ = dax.lookup(ROOT, b"b")
    dax.setupmapping(ea.nodeid, 0, 6 * MiB, 0, R)      # window [0, 6M) = a[0, 6M)
    dax.setupmapping(eb.nodeid, 4 * MiB, 2 * MiB, 2 * MiB, R)  # middle replaced by b
    w = dax.fe.window
    assert w.read(0, 2 * MiB) == a[:2 * MiB]
    assert w.read(2 * MiB, 2 * MiB) == b[4 * MiB:6 * MiB]
    assert w.read(4 * MiB, 2 * MiB) == a[4 * MiB:6 * MiB]
    # SHMEM never saw a map over a map: the front-end refuses those, and it served all.
    assert dax.fe.channel_server.errors == []
    assert sorted((o, m.length) for o, m in w.mappings.items()) == \
        [(0, 2 * MiB), (2 * MiB, 2 * MiB), (4 * MiB, 2 * MiB)]
    # Removing a range inside a mapping splits it too.
    dax.removemapping([(4 * MiB + 1 * MiB, 1 * MiB)])
    assert w.read(4 * MiB, MiB) == a[4 * MiB:5 * MiB]
    with pytest.raises(OSError):
        w.read(5 * MiB, 1)


def test_short_file_maps_its_pages_and_follows_growth_and_truncation(dax, shared):
    make_file(shared, "grow", 8192)
    e, _ = dax.lookup(ROOT, b"grow")
    dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)     # Linux asks for 2 MiB past EOF
    w = dax.fe.window
    assert w.mappings[0].length == 8192
    with open(shared / "grow", "ab") as f:
        f.write(b"z" * 8192)
    dax.getattr(e.nodeid)                            # the guest learns the new size...
    assert w.mappings[0].length == 16384             # ...and the window follows
    assert w.read(8192, 8192) == b"z" * 8192
    os.truncate(shared / "grow", 4096)
    dax.getattr(e.nodeid)
    assert w.mappings[0].length == 4096              # no page past EOF stays mapped
    dax.setattr(e.nodeid, valid=abi.FATTR_SIZE, size=0)
    assert w.mappings == {}
    assert dax.getattr(ROOT).ino != 0                # the daemon is fine


def test_partial_last_page_is_refused_like_qemu_does(dax, shared):
    make_file(shared, "odd", 5000)
    e, attr = dax.lookup(ROOT, b"odd")
    assert not attr.flags & abi.FUSE_ATTR_DAX        # dax=inode guests keep it in the page cache
    with pytest.raises(OSError) as err:
        dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    assert err.value.errno == errno.EIO
    assert dax.fe.window.mappings == {}
    make_file(shared, "even", 8192)
    _, attr = dax.lookup(ROOT, b"even")
    assert attr.flags & abi.FUSE_ATTR_DAX and attr.blksize == 4096


def test_lenient_front_end_maps_the_partial_page(start_daemon, connect, shared):
    data = make_file(shared, "odd", 5000)
    # (Not announced as a memory region: the daemon refuses regions longer than their file.)
    c = dax_client(start_daemon, connect, strict_eof=False, announce_window=False)
    e, _ = c.lookup(ROOT, b"odd")
    c.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    assert c.fe.window.read(0, 5000) == data
    assert c.fe.window.read(5000, 3192) == bytes(3192)  # the rest of the page reads zeros


def test_writable_mapping_needs_a_writable_handle(dax, shared):
    make_file(shared, "f", 2 * MiB)
    e, _ = dax.lookup(ROOT, b"f")
    ro = dax.open(e.nodeid, os.O_RDONLY).fh
    with pytest.raises(OSError) as err:
        dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, RW, fh=ro)
    assert err.value.errno == errno.EBADF
    dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, R, fh=ro)
    assert 0 in dax.fe.window.mappings
    dax.release(e.nodeid, ro)                       # a mapping made through fh goes with it
    assert dax.fe.window.mappings == {}


def test_forget_and_destroy_drop_mappings(dax, shared):
    make_file(shared, "f", 2 * MiB)
    make_file(shared, "g", 2 * MiB)
    e, _ = dax.lookup(ROOT, b"f")
    g, _ = dax.lookup(ROOT, b"g")
    dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    dax.setupmapping(g.nodeid, 0, 2 * MiB, 2 * MiB, R)
    dax.forget(e.nodeid, 1)
    dax.getattr(ROOT)                                # forget has no reply: sync on another op
    assert list(dax.fe.window.mappings) == [2 * MiB]
    dax.destroy()
    assert dax.fe.window.mappings == {}


def test_read_into_a_buffer_inside_the_window(dax, shared):
    """O_DIRECT read into a DAX mmap: the buffer is in the window; the front-end announced
    the mapping as a memory region (as QEMU 11.1 does), so the daemon can reach it."""
    src = make_file(shared, "src", 8192)
    make_file(shared, "dst", 2 * MiB)
    d, _ = dax.lookup(ROOT, b"dst")
    dax.setupmapping(d.nodeid, 0, 2 * MiB, 0, RW)
    s, _ = dax.lookup(ROOT, b"src")
    fh = dax.open(s.nodeid, os.O_RDONLY).fh
    fe = dax.fe
    req = abi.fuse_in_header.build(len=80, opcode=Opcode.FUSE_READ, unique=77, nodeid=s.nodeid) \
        + abi.fuse_read_in.build(fh=fh, offset=0, size=8192)
    g_in, g_out = fe.alloc.alloc(80), fe.alloc.alloc(16)
    fe.ram.write(g_in, req)
    assert dax.call_chain([(g_in, 80)], [(g_out, 16), (WINDOW_GPA + 4096, 8192)]) == 16 + 8192
    assert abi.fuse_out_header.parse(fe.ram.read(g_out, 16)).error == 0
    assert (shared / "dst").read_bytes()[4096:4096 + 8192] == src


def test_front_end_refusal_becomes_eio(start_daemon, connect, shared):
    make_file(shared, "f", 2 * MiB)
    c = dax_client(start_daemon, connect)
    c.fe.channel_server.refuse = True
    e, _ = c.lookup(ROOT, b"f")
    with pytest.raises(OSError) as err:
        c.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    assert err.value.errno == errno.EIO
    c.fe.channel_server.refuse = False
    c.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    assert 0 in c.fe.window.mappings


def test_without_a_window_dax_is_enosys(fuse, shared):
    make_file(shared, "f", 8192)
    e, _ = fuse.lookup(ROOT, b"f")
    with pytest.raises(OSError) as err:
        fuse.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    assert err.value.errno == errno.ENOSYS


@pytest.mark.parametrize("bit", [21, 22])
def test_shmem_bit_is_configurable(start_daemon, connect, shared, bit):
    make_file(shared, "f", 2 * MiB)
    c = dax_client(start_daemon, connect, "--shmem-bit", str(bit), shmem_bit=bit)
    e, _ = c.lookup(ROOT, b"f")
    c.setupmapping(e.nodeid, 0, 2 * MiB, 0, R)
    assert c.fe.window.read(0, 4) == (shared / "f").read_bytes()[:4]


def test_mismatched_shmem_bit_means_no_window(start_daemon, connect):
    from pyvirtiofsd.frontend import BackendError

    d = start_daemon("--cache-size", "64M", "--shmem-bit", "21")
    with pytest.raises(BackendError):
        connect(d, init=False, dax=True, shmem_bit=22)


def test_legacy_fs_dialect(start_daemon, connect, shared):
    data = make_file(shared, "f", 2 * MiB)
    c = dax_client(start_daemon, connect, "--dax-protocol", "legacy-fs", dax_protocol="legacy-fs")
    e, _ = c.lookup(ROOT, b"f")
    c.setupmapping(e.nodeid, 0, 2 * MiB, 0, RW)
    assert c.fe.window.read(0, 2 * MiB) == data
    c.removemapping([(0, 2 * MiB)])
    assert c.fe.window.mappings == {}


@pytest.mark.parametrize("page,shift", [(16384, 14), (65536, 16)])
def test_host_page_size_mismatch(start_daemon, connect, shared, page, shift):
    """A host with 16/64 KiB pages serving a 4 KiB-page guest: offsets must be aligned to
    the host page, and every attribute still says blksize = the guest's page size."""
    make_file(shared, "f", 4 * MiB)
    c = dax_client(start_daemon, connect, "--test-host-page-size", str(page))
    assert c.init_out.map_alignment == shift
    e, attr = c.lookup(ROOT, b"f")
    assert attr.blksize == 4096
    with pytest.raises(OSError) as err:
        c.setupmapping(e.nodeid, 4096, 2 * MiB, 0, R)       # 4 KiB aligned, not host aligned
    assert err.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        c.setupmapping(e.nodeid, 0, 2 * MiB, 4096, R)
    c.setupmapping(e.nodeid, page, 2 * MiB, page * 2, R)
    assert c.fe.window.read(page * 2, 16) == (shared / "f").read_bytes()[page:page + 16]
    assert c.getattr(e.nodeid).blksize == 4096
    for *_, (head, a) in c.listdir(ROOT, plus=True):
        if head.nodeid:
            assert a.blksize == 4096
    _, cattr, _ = c.create(ROOT, b"new")
    assert cattr.blksize == 4096


def test_random_setup_remove_cycles_leak_nothing(dax, shared):
    files = [make_file(shared, f"f{i}", (i + 1) * MiB) for i in range(4)]
    nodes = [dax.lookup(ROOT, f"f{i}".encode())[0].nodeid for i in range(4)]
    pid = dax.daemon.serving_pid()
    base_fds = fd_count(pid)
    rnd = random.Random(1234)
    slots = 64 * MiB // (2 * MiB)
    for _ in range(1000):
        slot = rnd.randrange(slots) * 2 * MiB
        if rnd.random() < 0.6:
            i = rnd.randrange(4)
            foff = rnd.randrange(len(files[i]) // MiB) * MiB
            dax.setupmapping(nodes[i], foff, 2 * MiB, slot, rnd.choice([R, RW]))
        else:
            dax.removemapping([(slot, 2 * MiB)])
    # Spot-check coherence of whatever is mapped now.
    for off, m in list(dax.fe.window.mappings.items())[:5]:
        assert dax.fe.window.read(off, 64) == os.pread(m.fd, 64, m.fd_offset)
    dax.removemapping([(0, 64 * MiB)])
    assert dax.fe.window.mappings == {}
    assert dax.fe.channel_server.errors == []
    assert fd_count(pid) == base_fds


def test_request_in_a_truncated_file_region_does_not_kill_the_daemon(dax, shared):
    """The memory table holds the DAX mapping's file (as QEMU 11.1's does); a host process
    truncates the file; a request whose header lies in the vanished pages must fail alone
    (a SIGBUS in the daemon's copy becomes EFAULT), not take the daemon down."""
    make_file(shared, "victim", 2 * MiB)
    e, _ = dax.lookup(ROOT, b"victim")
    dax.setupmapping(e.nodeid, 0, 2 * MiB, 0, RW)
    fe = dax.fe
    header = abi.fuse_in_header.build(len=56, opcode=Opcode.FUSE_GETATTR, unique=99, nodeid=ROOT) \
        + abi.fuse_getattr_in.build()
    fe.window.write(8192, header)
    os.truncate(shared / "victim", 0)  # behind the daemon's back: no FUSE op tells it
    g_out = fe.alloc.alloc(abi.FUSE_ATTR_OUT_SIZE + 16)
    dax.call_chain([(WINDOW_GPA + 8192, 56)], [(g_out, abi.FUSE_ATTR_OUT_SIZE + 16)])
    assert dax.daemon.proc.poll() is None
    assert abi.fuse_out_header.parse(fe.ram.read(g_out, 16)).error < 0
    assert dax.getattr(ROOT).ino != 0
