"""FUSE operations through the whole stack: our front-end → vhost-user socket → the real
daemon → a real directory.  Request shapes vary the way guest kernels vary them."""
import errno
import os
import stat
import subprocess

import pytest

from pyvirtiofsd.frontend import FuseClient
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode

ROOT = abi.FUSE_ROOT_ID


def test_init_negotiates(fuse):
    out = fuse.init_out
    assert out.major == 7 and 31 <= out.minor <= 38
    assert out.max_write >= 128 * 1024
    assert not out.flags & abi.FUSE_MAP_ALIGNMENT  # no DAX window configured


def test_requests_before_init_fail(start_daemon, connect):
    client = connect(start_daemon(), init=False)
    assert client.call(Opcode.FUSE_GETATTR, ROOT, abi.fuse_getattr_in.build(), 104).error == -errno.EIO


def test_lookup_of_missing_name(fuse):
    with pytest.raises(FileNotFoundError):
        fuse.lookup(ROOT, b"nope")


@pytest.mark.parametrize("shape,size", [
    (dict(), 300_000),
    (dict(segment=7, indirect=True), 5_000),      # headers split mid-struct
    (dict(segment=4096), 300_000),                 # pages, as the Linux driver sends data
    (dict(indirect=True), 300_000),
    (dict(segment=512, indirect=True), 300_000),
])
def test_create_write_read_with_every_chain_shape(fuse, shared, shape, size):
    client = FuseClient(fuse.fe, **shape)
    entry, attr, opened = client.create(ROOT, b"data.bin")
    payload = os.urandom(size)
    assert client.write(entry.nodeid, opened.fh, 1000, payload) == len(payload)
    assert (shared / "data.bin").read_bytes()[1000:] == payload
    assert client.read(entry.nodeid, opened.fh, 1000, len(payload)) == payload
    assert client.read(entry.nodeid, opened.fh, 1000 + len(payload) - 10, 4096) == payload[-10:]
    assert client.read(entry.nodeid, opened.fh, 10**9, 4096) == b""
    client.release(entry.nodeid, opened.fh)


def test_one_mebibyte_read_in_pages(start_daemon, connect, shared):
    data = os.urandom(1 << 20)
    (shared / "big").write_bytes(data)
    fuse = connect(start_daemon(), queue_size=512)
    entry, attr = fuse.lookup(ROOT, b"big")
    assert attr.size == len(data)
    fh = fuse.open(entry.nodeid, os.O_RDONLY).fh
    paged = FuseClient(fuse.fe, segment=4096)
    assert paged.read(entry.nodeid, fh, 0, 1 << 20) == data


def test_directory_operations(fuse, shared):
    d, _ = fuse.mkdir(ROOT, b"dir", 0o750)
    assert stat.S_IMODE(os.stat(shared / "dir").st_mode) == 0o750
    for i in range(300):
        e, _, o = fuse.create(d.nodeid, b"f%03d" % i)
        fuse.release(e.nodeid, o.fh)
    names = [n for _, _, _, n in fuse.listdir(d.nodeid)]
    assert sorted(n for n in names if n not in (b".", b"..")) == [b"f%03d" % i for i in range(300)]
    plus = fuse.listdir(d.nodeid, plus=True)
    for ino, off, typ, name, (head, attr) in plus:
        if name in (b".", b".."):
            continue
        assert head.nodeid != 0 and attr.blksize == 4096
        assert attr.ino == os.lstat(shared / "dir" / name.decode()).st_ino
    with pytest.raises(OSError) as e:
        fuse.rmdir(ROOT, b"dir")
    assert e.value.errno == errno.ENOTEMPTY


def test_rename_link_symlink_unlink(fuse, shared):
    (shared / "a").write_text("A")
    (shared / "b").write_text("B")
    a, _ = fuse.lookup(ROOT, b"a")
    fuse.rename(ROOT, b"a", ROOT, b"c")
    assert (shared / "c").read_text() == "A" and not (shared / "a").exists()
    with pytest.raises(FileExistsError):
        fuse.rename(ROOT, b"c", ROOT, b"b", flags=1)  # RENAME_NOREPLACE
    fuse.rename(ROOT, b"c", ROOT, b"b", flags=2)      # RENAME_EXCHANGE
    assert (shared / "b").read_text() == "A" and (shared / "c").read_text() == "B"
    _, attr = fuse.link(a.nodeid, ROOT, b"hard")
    assert attr.nlink == 2 and os.stat(shared / "hard").st_ino == os.stat(shared / "b").st_ino
    s, sattr = fuse.symlink(ROOT, b"sym", b"b")
    assert stat.S_ISLNK(sattr.mode) and os.readlink(shared / "sym") == "b"
    assert fuse.readlink(s.nodeid) == b"b"
    fuse.unlink(ROOT, b"hard")
    assert not (shared / "hard").exists()


def test_setattr_truncate_chmod_and_times(fuse, shared):
    (shared / "t").write_bytes(b"x" * 10000)
    e, _ = fuse.lookup(ROOT, b"t")
    attr = fuse.setattr(e.nodeid, valid=abi.FATTR_SIZE, size=5)
    assert attr.size == 5 and os.path.getsize(shared / "t") == 5
    attr = fuse.setattr(e.nodeid, valid=abi.FATTR_MODE, mode=0o600)
    assert stat.S_IMODE(os.stat(shared / "t").st_mode) == 0o600
    fuse.setattr(e.nodeid, valid=abi.FATTR_MTIME, mtime=1_000_000, mtimensec=5)
    assert os.stat(shared / "t").st_mtime_ns == 1_000_000 * 10**9 + 5
    assert attr.blksize == 4096


def test_statfs(fuse, shared):
    st = fuse.statfs()
    host = os.statvfs(shared)
    assert st.blocks == host.f_blocks and st.namelen == host.f_namemax


def test_forget_on_hiprio_queue_gets_no_reply_but_is_returned(fuse):
    e, _ = fuse.mkdir(ROOT, b"gone")
    fuse.forget(e.nodeid, 1)  # completes (used element comes back) with no FUSE reply
    assert fuse.getattr(ROOT).ino != 0


def test_guest_user_owns_what_it_creates(fuse, shared):
    if os.geteuid() != 0:
        pytest.fail("the suite runs as root (CI does); setfsuid needs it")
    os.chmod(shared, 0o777)
    e, attr, o = fuse.create(ROOT, b"mine", uid=1000, gid=1000)
    st = os.stat(shared / "mine")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert (attr.uid, attr.gid) == (1000, 1000)
    d, _ = fuse.mkdir(ROOT, b"mydir", uid=1000, gid=1000)
    assert os.stat(shared / "mydir").st_uid == 1000


def test_names_that_would_escape_are_refused(fuse, shared):
    for name in (b"..", b".", b"a/b", b"../etc"):
        with pytest.raises(OSError):
            fuse.create(ROOT, name)
    os.symlink("/etc", shared / "etc-link")
    link, attr = fuse.lookup(ROOT, b"etc-link")
    assert stat.S_ISLNK(attr.mode)
    # Looking up through a symlink is never done by the daemon (the guest resolves links).
    with pytest.raises(OSError):
        fuse.lookup(link.nodeid, b"passwd")


def test_malformed_fuse_requests_get_errors_and_the_daemon_goes_on(fuse):
    # Header length larger than what the chain carries.
    r = fuse.call(Opcode.FUSE_LOOKUP, ROOT, b"x\0", abi.FUSE_ENTRY_OUT_SIZE, raw_len=5000)
    assert r.error in (-errno.EINVAL, -errno.EIO)
    # Truncated argument structs for every opcode with one.
    for op in (Opcode.FUSE_READ, Opcode.FUSE_WRITE, Opcode.FUSE_SETATTR, Opcode.FUSE_MKDIR,
               Opcode.FUSE_RENAME2, Opcode.FUSE_SETUPMAPPING, Opcode.FUSE_REMOVEMAPPING):
        r = fuse.call(op, ROOT, b"\1\2\3", 256)
        assert r.error < 0
    # Unknown opcode.
    assert fuse.call(999, ROOT, b"", 64).error == -errno.ENOSYS
    assert fuse.getattr(ROOT).ino != 0


def test_malformed_chain_is_returned_and_the_daemon_goes_on(fuse):
    q = fuse.fe.queues[1]
    # A descriptor pointing far outside guest RAM, then a loop.
    free = [i for i in range(q.size)][-2:]
    q.write_desc(free[0], 1 << 40, 64, 0, 0)
    q.publish_head(free[0])
    q.kick(force=True)
    q.write_desc(free[1], 0, 16, 1, free[1])
    q.publish_head(free[1])
    q.kick(force=True)
    assert fuse.getattr(ROOT).ino != 0
    assert "refused a descriptor chain" in fuse.daemon.log()


def test_guest_page_size_option(start_daemon, connect, shared):
    (shared / "f").write_text("x")
    client = connect(start_daemon("--guest-page-size", "16384"))
    _, attr = client.lookup(ROOT, b"f")
    assert attr.blksize == 16384
    assert client.getattr(ROOT).blksize == 16384


def test_readonly_refuses_changes(start_daemon, connect, shared):
    (shared / "f").write_text("x")
    client = connect(start_daemon("--readonly"))
    with pytest.raises(OSError) as e:
        client.create(ROOT, b"new")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError):
        client.open(client.lookup(ROOT, b"f")[0].nodeid, os.O_RDWR)
    assert not (shared / "new").exists()


@pytest.fixture
def huge_tmpfs(tmp_path):
    """A tmpfs with transparent huge pages: its files report st_blksize = 2 MiB."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (the suite runs as root)")
    d = tmp_path / "huge"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=always,size=64M", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_blksize_is_the_guest_page_size_on_a_huge_page_tmpfs(huge_tmpfs, start_daemon, connect):
    (huge_tmpfs / "f").write_bytes(b"x" * 100)
    assert os.stat(huge_tmpfs / "f").st_blksize == 2 << 20  # the host says 2 MiB
    client = connect(start_daemon(shared_dir=huge_tmpfs))
    e, attr = client.lookup(ROOT, b"f")
    assert attr.blksize == 4096
    assert client.getattr(e.nodeid).blksize == 4096
    _, cattr, _ = client.create(ROOT, b"g")
    assert cattr.blksize == 4096
    for *_, (head, attr) in client.listdir(ROOT, plus=True):
        if head.nodeid:
            assert attr.blksize == 4096


def test_read_into_a_buffer_outside_guest_memory_fails_with_efault(fuse, shared):
    """What a guest's O_DIRECT read into a DAX mmap looks like when the front-end did not
    put the window in the memory table: that one request fails with EFAULT."""
    (shared / "f").write_bytes(b"y" * 8192)
    e, _ = fuse.lookup(ROOT, b"f")
    fh = fuse.open(e.nodeid, os.O_RDONLY).fh
    fe = fuse.fe
    req = abi.fuse_in_header.build(len=80, opcode=Opcode.FUSE_READ, unique=4242, nodeid=e.nodeid) \
        + abi.fuse_read_in.build(fh=fh, offset=0, size=8192)
    g_in, g_out = fe.alloc.alloc(80), fe.alloc.alloc(16)
    fe.ram.write(g_in, req)
    assert fuse.call_chain([(g_in, 80)], [(g_out, 16), (1 << 44, 8192)]) == 16
    h = abi.fuse_out_header.parse(fe.ram.read(g_out, 16))
    assert (h.unique, h.error) == (4242, -errno.EFAULT)
    assert fuse.read(e.nodeid, fh, 0, 10) == b"y" * 10  # and the daemon goes on
