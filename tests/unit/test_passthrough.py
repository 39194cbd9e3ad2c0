"""PassthroughFs, every operation through Server.handle, checked in the reply and on the host."""
import errno
import os
import stat
import threading

import pytest
from fdcount import open_fds
from fusewire import Client, FuseError, cstr, parse_direntplus, parse_dirents

from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.passthrough import PassthroughFs
from pyvirtiofsd.server import Server, ServerOptions

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError("no flags line")


def host_fd(fs: PassthroughFs, fh: int) -> int:
    with fs.handles.borrow(fh) as h:
        return h.fd


# --- names ----------------------------------------------------------------------------------

def test_lookup_and_getattr(client, share):
    (share / "f").write_bytes(b"12345")
    e = client.lookup(1, "f")
    st = os.stat(share / "f")
    assert e.nodeid > 1 and e.attr.ino == st.st_ino and e.attr.size == 5
    assert e.attr.mode == st.st_mode and e.attr.mtime == int(st.st_mtime)
    a = client.getattr(e.nodeid)
    assert a.ino == st.st_ino and a.size == 5 and a.nlink == 1
    root = client.getattr(1)
    assert root.ino == os.stat(share).st_ino and stat.S_ISDIR(root.mode)


def test_lookup_missing(client):
    with pytest.raises(FuseError) as ei:
        client.lookup(1, "nope")
    assert ei.value.errno == errno.ENOENT


def test_same_file_same_nodeid_and_lookup_counts(client, passthrough, share):
    (share / "f").write_bytes(b"")
    a = client.lookup(1, "f").nodeid
    b = client.lookup(1, "f").nodeid
    assert a == b and passthrough.inodes.lookup_count(a) == 2


def test_forget_closes_the_inode_fd(client, passthrough, share):
    (share / "f").write_bytes(b"")
    before = open_fds()
    n = client.lookup(1, "f").nodeid
    client.lookup(1, "f")
    assert len(open_fds() - before) == 1
    assert client.forget(n, 1).used_len == 0
    assert passthrough.inodes.lookup_count(n) == 1 and len(open_fds() - before) == 1
    client.forget(n, 1)
    assert passthrough.inodes.lookup_count(n) == 0 and open_fds() == before
    with pytest.raises(FuseError) as ei:
        client.getattr(n)
    assert ei.value.errno == errno.EBADF
    # a new lookup gets a fresh nodeid: old numbers are never reused
    assert client.lookup(1, "f").nodeid > n


def test_batch_forget(client, passthrough, share):
    for n in "abc":
        (share / n).write_bytes(b"")
    ids = [client.lookup(1, n).nodeid for n in "abc"]
    client.lookup(1, "a")
    assert client.batch_forget([(ids[0], 2), (ids[1], 1), (ids[2], 1)]).used_len == 0
    assert len(passthrough.inodes) == 1


def test_forget_of_root_or_unknown_is_harmless(client, passthrough):
    assert client.forget(1, 100).used_len == 0
    assert client.forget(12345, 1).used_len == 0
    assert client.getattr(1).ino == os.fstat(passthrough.inodes.root.fd).st_ino


def test_unknown_nodeid_is_ebadf(client):
    for op, body in [(Opcode.FUSE_GETATTR, bytes(16)), (Opcode.FUSE_LOOKUP, cstr("x")),
                     (Opcode.FUSE_OPEN, abi.fuse_open_in.pack(0, 0)),
                     (Opcode.FUSE_READLINK, b""), (Opcode.FUSE_STATFS, b"")]:
        assert client.call(op, 999, body).error == -errno.EBADF, op


def test_unknown_fh_is_ebadf(client, share):
    (share / "f").write_bytes(b"x")
    n = client.lookup(1, "f").nodeid
    assert client.call(Opcode.FUSE_READ, n, abi.fuse_read_in.build(fh=77, size=1)).error \
        == -errno.EBADF
    assert client.call(Opcode.FUSE_RELEASE, n, abi.fuse_release_in.build(fh=77)).error \
        == -errno.EBADF


# --- setattr ------------------------------------------------------------------------------

def test_setattr_mode(client, share):
    (share / "f").write_bytes(b"")
    n = client.lookup(1, "f").nodeid
    a = client.setattr(n, valid=abi.FATTR_MODE, mode=stat.S_IFREG | 0o4711)
    assert stat.S_IMODE(a.mode) == 0o4711
    assert stat.S_IMODE(os.stat(share / "f").st_mode) == 0o4711


def test_setattr_owner(client, share):
    (share / "f").write_bytes(b"")
    n = client.lookup(1, "f").nodeid
    a = client.setattr(n, valid=abi.FATTR_UID | abi.FATTR_GID, uid=1234, gid=4321)
    st = os.stat(share / "f")
    assert (a.uid, a.gid) == (st.st_uid, st.st_gid) == (1234, 4321)
    client.setattr(n, valid=abi.FATTR_GID, gid=55)
    st = os.stat(share / "f")
    assert (st.st_uid, st.st_gid) == (1234, 55)


def test_setattr_owner_of_a_symlink_not_its_target(client, share):
    (share / "target").write_bytes(b"")
    os.symlink("target", share / "sl")
    n = client.lookup(1, "sl").nodeid
    client.setattr(n, valid=abi.FATTR_UID, uid=777)
    assert os.lstat(share / "sl").st_uid == 777 and os.stat(share / "target").st_uid == 0


def test_setattr_size_without_and_with_handle(client, share):
    (share / "f").write_bytes(b"0123456789")
    n = client.lookup(1, "f").nodeid
    assert client.setattr(n, valid=abi.FATTR_SIZE, size=4).size == 4
    assert (share / "f").read_bytes() == b"0123"
    fh, _ = client.open(n, os.O_RDWR)
    a = client.setattr(n, valid=abi.FATTR_SIZE | abi.FATTR_FH, size=2, fh=fh)
    assert a.size == 2 and (share / "f").read_bytes() == b"01"
    client.release(n, fh)


def test_setattr_size_on_a_directory(client, share):
    (share / "d").mkdir()
    n = client.lookup(1, "d").nodeid
    assert client.call(Opcode.FUSE_SETATTR, n, abi.fuse_setattr_in.build(
        valid=abi.FATTR_SIZE, size=0)).error == -errno.EISDIR


def test_setattr_times(client, share):
    (share / "f").write_bytes(b"")
    n = client.lookup(1, "f").nodeid
    client.setattr(n, valid=abi.FATTR_ATIME | abi.FATTR_MTIME, atime=1000, atimensec=5,
                   mtime=2000, mtimensec=7)
    st = os.stat(share / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 5, 2000 * 10**9 + 7)
    # only mtime, atime omitted
    client.setattr(n, valid=abi.FATTR_MTIME, mtime=3000)
    st = os.stat(share / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 5, 3000 * 10**9)
    # MTIME_NOW
    client.setattr(n, valid=abi.FATTR_MTIME | abi.FATTR_MTIME_NOW)
    st = os.stat(share / "f")
    assert st.st_mtime > 1_600_000_000 and st.st_atime_ns == 1000 * 10**9 + 5
    # ATIME_NOW via a handle
    fh, _ = client.open(n, os.O_RDONLY)
    client.setattr(n, valid=abi.FATTR_ATIME | abi.FATTR_ATIME_NOW | abi.FATTR_FH, fh=fh)
    assert os.stat(share / "f").st_atime > 1_600_000_000
    client.release(n, fh)


def test_setattr_negative_time(client, share):
    (share / "f").write_bytes(b"")
    n = client.lookup(1, "f").nodeid
    client.setattr(n, valid=abi.FATTR_MTIME, mtime=(-5) & (2**64 - 1))
    assert os.stat(share / "f").st_mtime == -5
    assert client.getattr(n).mtime == (-5) & (2**64 - 1)


# --- creating names -------------------------------------------------------------------

def test_mkdir_rmdir(client, share):
    e = client.mkdir(1, "d", 0o750)
    assert stat.S_ISDIR(e.attr.mode)
    assert stat.S_IMODE(os.stat(share / "d").st_mode) == 0o750   # no daemon umask applied
    sub = client.mkdir(e.nodeid, "sub")
    assert (share / "d" / "sub").is_dir() and sub.nodeid != e.nodeid
    with pytest.raises(FuseError) as ei:
        client.rmdir(1, "d")
    assert ei.value.errno == errno.ENOTEMPTY
    client.rmdir(e.nodeid, "sub")
    client.rmdir(1, "d")
    assert not (share / "d").exists()


def test_mkdir_existing(client, share):
    (share / "d").mkdir()
    with pytest.raises(FuseError) as ei:
        client.mkdir(1, "d")
    assert ei.value.errno == errno.EEXIST


def test_mknod_fifo_and_regular(client, share):
    e = client.mknod(1, "fifo", stat.S_IFIFO | 0o640)
    assert stat.S_ISFIFO(os.lstat(share / "fifo").st_mode) and stat.S_ISFIFO(e.attr.mode)
    assert stat.S_IMODE(os.lstat(share / "fifo").st_mode) == 0o640
    client.mknod(1, "reg", stat.S_IFREG | 0o600)
    assert (share / "reg").is_file()


def test_mknod_char_device_rdev(client, share):
    # rdev travels in the guest's 32-bit new_encode_dev form: major 1, minor 3 is 0x103
    e = client.mknod(1, "null", stat.S_IFCHR | 0o600, rdev=0x103)
    st = os.lstat(share / "null")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert e.attr.rdev == 0x103


def test_symlink_readlink(client, share):
    e = client.symlink(1, "sl", "some/where/../x")
    assert os.readlink(share / "sl") == "some/where/../x" and stat.S_ISLNK(e.attr.mode)
    assert client.readlink(e.nodeid) == b"some/where/../x"
    (share / "f").write_bytes(b"")
    f = client.lookup(1, "f").nodeid
    assert client.call(Opcode.FUSE_READLINK, f).error == -errno.EINVAL


def test_unlink(client, share):
    (share / "f").write_bytes(b"")
    client.unlink(1, "f")
    assert not (share / "f").exists()
    with pytest.raises(FuseError) as ei:
        client.unlink(1, "f")
    assert ei.value.errno == errno.ENOENT


def test_link(client, share):
    (share / "f").write_bytes(b"x")
    e = client.lookup(1, "f")
    d = client.mkdir(1, "d")
    le = client.link(e.nodeid, d.nodeid, "hard")
    assert le.nodeid == e.nodeid and le.attr.nlink == 2
    assert os.stat(share / "d" / "hard").st_ino == os.stat(share / "f").st_ino


def test_link_a_symlink_makes_a_link_to_the_symlink(client, share):
    os.symlink("/etc/passwd", share / "sl")
    e = client.lookup(1, "sl")
    client.link(e.nodeid, 1, "sl2")
    assert os.path.islink(share / "sl2") and os.readlink(share / "sl2") == "/etc/passwd"


def test_rename_plain_noreplace_exchange(client, share):
    (share / "a").write_bytes(b"A")
    (share / "b").write_bytes(b"B")
    d = client.mkdir(1, "d")
    client.rename(1, "a", d.nodeid, "a2")
    assert (share / "d" / "a2").read_bytes() == b"A" and not (share / "a").exists()
    with pytest.raises(FuseError) as ei:
        client.rename(d.nodeid, "a2", 1, "b", flags=RENAME_NOREPLACE)
    assert ei.value.errno == errno.EEXIST
    client.rename(d.nodeid, "a2", 1, "b", flags=RENAME_EXCHANGE)
    assert (share / "b").read_bytes() == b"A" and (share / "d" / "a2").read_bytes() == b"B"
    client.rename(1, "b", 1, "c", flags=RENAME_NOREPLACE)
    assert (share / "c").read_bytes() == b"A"
    with pytest.raises(FuseError) as ei:
        client.rename(1, "c", 1, "d")          # file over a directory
    assert ei.value.errno == errno.EISDIR


# --- files --------------------------------------------------------------------------------

def test_open_read_write_release(client, passthrough, share):
    (share / "f").write_bytes(b"hello world")
    n = client.lookup(1, "f").nodeid
    before = open_fds()
    fh, flags = client.open(n, os.O_RDWR)
    assert flags == 0
    assert client.read(n, fh, 6, 100) == b"world"
    assert client.read(n, fh, 100, 10) == b""
    assert client.write(n, fh, 0, b"HELLO") == 5
    assert (share / "f").read_bytes() == b"HELLO world"
    assert client.write(n, fh, 20, b"!") == 1
    assert (share / "f").read_bytes() == b"HELLO world" + bytes(9) + b"!"
    client.release(n, fh)
    assert open_fds() == before and len(passthrough.handles) == 0


def test_read_is_limited_by_the_out_area(client, share):
    (share / "f").write_bytes(b"x" * 10000)
    n = client.lookup(1, "f").nodeid
    fh, _ = client.open(n, os.O_RDONLY)
    r = client.call(Opcode.FUSE_READ, n, abi.fuse_read_in.build(fh=fh, size=10000),
                    out_len=16 + 100)
    assert r.error == 0 and r.body == b"x" * 100


def test_open_with_o_trunc(client, share):
    (share / "f").write_bytes(b"content")
    n = client.lookup(1, "f").nodeid
    fh, _ = client.open(n, os.O_WRONLY | os.O_TRUNC)
    assert (share / "f").read_bytes() == b""
    client.release(n, fh)


def test_open_directory_and_opendir_file(client, share):
    (share / "d").mkdir()
    (share / "f").write_bytes(b"")
    d = client.lookup(1, "d").nodeid
    f = client.lookup(1, "f").nodeid
    assert client.call(Opcode.FUSE_OPEN, d, abi.fuse_open_in.pack(0, 0)).error == -errno.EISDIR
    assert client.call(Opcode.FUSE_OPENDIR, f, abi.fuse_open_in.pack(0, 0)).error \
        == -errno.ENOTDIR


def test_o_direct_is_dropped_unless_allowed(share):
    (share / "f").write_bytes(b"x" * 4096)
    for allow, expect in ((False, 0), (True, os.O_DIRECT)):
        fs = PassthroughFs(share, allow_direct_io=allow)
        try:
            c = Client(Server(fs))
            assert c.init().ok
            n = c.lookup(1, "f").nodeid
            fh, _ = c.open(n, os.O_RDONLY | os.O_DIRECT)
            assert fd_flags(host_fd(fs, fh)) & os.O_DIRECT == expect
        finally:
            fs.close()


def test_writeback_makes_write_only_fds_readable_and_drops_o_append(make_client, passthrough,
                                                                   share):
    (share / "f").write_bytes(b"abc")
    c = make_client(writeback=True)
    assert passthrough.writeback
    n = c.lookup(1, "f").nodeid
    fh, _ = c.open(n, os.O_WRONLY | os.O_APPEND)
    flags = fd_flags(host_fd(passthrough, fh))
    assert flags & os.O_ACCMODE == os.O_RDWR and not flags & os.O_APPEND
    assert c.read(n, fh, 0, 3) == b"abc"
    # the guest computes the append offset itself; the host writes exactly there
    c.write(n, fh, 1, b"Z")
    assert (share / "f").read_bytes() == b"aZc"


def test_without_writeback_o_append_is_kept(client, passthrough, share):
    (share / "f").write_bytes(b"abc")
    assert not passthrough.writeback
    n = client.lookup(1, "f").nodeid
    fh, _ = client.open(n, os.O_WRONLY | os.O_APPEND)
    flags = fd_flags(host_fd(passthrough, fh))
    assert flags & os.O_ACCMODE == os.O_WRONLY and flags & os.O_APPEND
    client.write(n, fh, 0, b"Z")
    assert (share / "f").read_bytes() == b"abcZ"


def test_create(client, passthrough, share):
    e, fh, _ = client.create(1, "new", 0o640, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    st = os.stat(share / "new")
    assert e.attr.ino == st.st_ino and stat.S_IMODE(st.st_mode) == 0o640
    assert passthrough.inodes.lookup_count(e.nodeid) == 1
    assert client.write(e.nodeid, fh, 0, b"data") == 4
    assert (share / "new").read_bytes() == b"data"
    client.release(e.nodeid, fh)
    with pytest.raises(FuseError) as ei:
        client.create(1, "new", 0o640, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    assert ei.value.errno == errno.EEXIST


def test_create_does_not_follow_a_symlink(client, share, tmp_path):
    outside = tmp_path / "outside"
    os.symlink(outside, share / "trap")
    with pytest.raises(FuseError) as ei:
        client.create(1, "trap", 0o644, os.O_RDWR | os.O_CREAT)
    assert ei.value.errno == errno.ELOOP
    assert not outside.exists()


def test_tmpfile(client, passthrough, share):
    e, fh, _ = client.tmpfile(1, 0o600, os.O_RDWR)
    assert os.listdir(share) == []
    assert stat.S_ISREG(e.attr.mode) and e.attr.nlink == 0
    assert client.write(e.nodeid, fh, 0, b"tmp") == 3
    assert client.read(e.nodeid, fh, 0, 10) == b"tmp"
    client.link(e.nodeid, 1, "named")      # linkat of an O_TMPFILE through /proc
    assert (share / "named").read_bytes() == b"tmp"
    client.release(e.nodeid, fh)


def test_statfs(client, share):
    body = client.ok(Opcode.FUSE_STATFS, 1)
    st = abi.fuse_kstatfs.parse(body)
    host = os.statvfs(share)
    assert (st.bsize, st.frsize, st.namelen, st.blocks) == (host.f_bsize, host.f_frsize,
                                                             host.f_namemax, host.f_blocks)


def test_fsync_flush_fsyncdir_syncfs(client, share, passthrough):
    (share / "f").write_bytes(b"x")
    n = client.lookup(1, "f").nodeid
    fh, _ = client.open(n, os.O_RDWR)
    before = open_fds()
    for datasync in (0, abi.FUSE_FSYNC_FDATASYNC):
        assert client.ok(Opcode.FUSE_FSYNC, n, abi.fuse_fsync_in.build(
            fh=fh, fsync_flags=datasync)) == b""
    assert client.ok(Opcode.FUSE_FLUSH, n, abi.fuse_flush_in.build(fh=fh)) == b""
    assert client.ok(Opcode.FUSE_SYNCFS, n, abi.fuse_syncfs_in.pack(0)) == b""
    assert client.ok(Opcode.FUSE_SYNCFS, 1, abi.fuse_syncfs_in.pack(0)) == b""
    dfh = client.opendir(1)
    assert client.ok(Opcode.FUSE_FSYNCDIR, 1, abi.fuse_fsync_in.build(fh=dfh)) == b""
    client.release(1, dfh, dir=True)
    assert open_fds() == before       # flush's dup and syncfs's fd are closed again
    client.release(n, fh)


def test_access(share, passthrough):
    (share / "f").write_bytes(b"")
    os.chown(share / "f", 1000, 1000)
    os.chmod(share / "f", 0o640)
    server = Server(passthrough)
    root, owner, group, other = (Client(server, u, g) for u, g in
                                 ((0, 0), (1000, 1000), (2000, 1000), (3000, 3000)))
    assert root.init().ok
    n = root.lookup(1, "f").nodeid

    def access(c, mask):
        return -c.call(Opcode.FUSE_ACCESS, n, abi.fuse_access_in.pack(mask, 0)).error

    assert access(owner, os.R_OK | os.W_OK) == 0
    assert access(owner, os.X_OK) == errno.EACCES
    assert access(group, os.R_OK) == 0 and access(group, os.W_OK) == errno.EACCES
    assert access(other, os.R_OK) == errno.EACCES and access(other, os.F_OK) == 0
    assert access(root, os.R_OK | os.W_OK) == 0 and access(root, os.X_OK) == errno.EACCES
    os.chmod(share / "f", 0o641)
    assert access(root, os.X_OK) == 0


def test_fallocate_and_lseek_data_hole(client, share):
    n = client.create(1, "sparse", 0o644, os.O_RDWR | os.O_CREAT)[0].nodeid
    fh = client.open(n, os.O_RDWR)[0]
    assert client.ok(Opcode.FUSE_FALLOCATE, n, abi.fuse_fallocate_in.build(
        fh=fh, offset=0, length=1 << 20)) == b""
    assert os.stat(share / "sparse").st_size == 1 << 20
    client.write(n, fh, 0, b"x" * 8192)
    assert client.ok(Opcode.FUSE_FALLOCATE, n, abi.fuse_fallocate_in.build(
        fh=fh, offset=0, length=1 << 20,
        mode=FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) == b""
    os.truncate(share / "sparse", 2 << 20)
    with open(share / "sparse", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"D" * 4096)
    body = client.ok(Opcode.FUSE_LSEEK, n, abi.fuse_lseek_in.build(
        fh=fh, offset=0, whence=os.SEEK_DATA))
    assert abi.fuse_lseek_out.parse(body).offset == 1 << 20
    body = client.ok(Opcode.FUSE_LSEEK, n, abi.fuse_lseek_in.build(
        fh=fh, offset=1 << 20, whence=os.SEEK_HOLE))
    assert abi.fuse_lseek_out.parse(body).offset == (1 << 20) + 4096
    r = client.call(Opcode.FUSE_LSEEK, n, abi.fuse_lseek_in.build(
        fh=fh, offset=(1 << 20) + 8192, whence=os.SEEK_DATA))
    assert r.error == -errno.ENXIO


def test_copy_file_range(client, share):
    (share / "src").write_bytes(b"0123456789")
    (share / "dst").write_bytes(b"")
    s = client.lookup(1, "src").nodeid
    d = client.lookup(1, "dst").nodeid
    sfh = client.open(s, os.O_RDONLY)[0]
    dfh = client.open(d, os.O_WRONLY)[0]
    body = client.ok(Opcode.FUSE_COPY_FILE_RANGE, s, abi.fuse_copy_file_range_in.build(
        fh_in=sfh, off_in=2, nodeid_out=d, fh_out=dfh, off_out=1, len=5))
    assert abi.fuse_write_out.parse(body).size == 5
    assert (share / "dst").read_bytes() == b"\0" + b"23456"
    assert client.call(Opcode.FUSE_COPY_FILE_RANGE, s, abi.fuse_copy_file_range_in.build(
        fh_in=sfh, nodeid_out=d, fh_out=dfh, len=1, flags=1)).error == -errno.EINVAL


# --- directories ------------------------------------------------------------------------

def test_readdir_lists_everything_once_across_small_buffers(client, share):
    names = {f"entry-{i:04d}-{'x' * (i % 40)}" for i in range(300)}
    for n in names:
        (share / n).write_bytes(b"")
    fh = client.opendir(1)
    seen, offset = [], 0
    while True:
        ents = parse_dirents(client.readdir(1, fh, offset, size=512))
        if not ents:
            break
        seen += [e[3].decode() for e in ents]
        offset = ents[-1][1]
    client.release(1, fh, dir=True)
    assert sorted(seen) == sorted(names | {".", ".."})
    assert len(seen) == len(set(seen))


def test_readdir_types_and_inos(client, share):
    (share / "d").mkdir()
    (share / "f").write_bytes(b"")
    os.symlink("f", share / "l")
    fh = client.opendir(1)
    ents = {e[3]: e for e in parse_dirents(client.readdir(1, fh))}
    assert ents[b"d"][2] == stat.S_IFDIR >> 12 and ents[b"f"][2] == stat.S_IFREG >> 12
    assert ents[b"l"][2] == stat.S_IFLNK >> 12
    assert ents[b"f"][0] == os.lstat(share / "f").st_ino


def test_readdirplus_counts_lookups_only_for_sent_entries(client, passthrough, share):
    for i in range(40):
        (share / f"f{i:02d}").write_bytes(b"z" * i)
    fh = client.opendir(1)
    size = abi.direntplus_size(3) * 10
    offset, total = 0, []
    while True:
        ents = parse_direntplus(client.readdir(1, fh, offset, size=size, plus=True))
        if not ents:
            break
        total += ents
        offset = ents[-1][1][1]
        live = [e for e, d in total if d[3] not in (b".", b"..")]
        assert len(passthrough.inodes) == 1 + len(live)
    client.release(1, fh, dir=True)
    named = {d[3]: e for e, d in total}
    assert named[b"."].nodeid == 0 and named[b".."].nodeid == 0
    for i in range(40):
        e = named[f"f{i:02d}".encode()]
        assert e.attr.size == i and passthrough.inodes.lookup_count(e.nodeid) == 1
    assert len(passthrough.inodes) == 41


def test_readdirplus_nodeids_match_lookup(client, share):
    (share / "f").write_bytes(b"")
    n = client.lookup(1, "f").nodeid
    fh = client.opendir(1)
    ents = {d[3]: e for e, d in parse_direntplus(client.readdir(1, fh, plus=True))}
    assert ents[b"f"].nodeid == n


def test_releasedir_and_opendir_fds(client, share):
    before = open_fds()
    fh = client.opendir(1)
    client.readdir(1, fh)
    client.release(1, fh, dir=True)
    assert open_fds() == before


# --- xattrs, statx ------------------------------------------------------------------------

def test_xattrs(share):
    (share / "f").write_bytes(b"")
    fs = PassthroughFs(share, xattr=True)
    try:
        c = Client(Server(fs, ServerOptions(xattr=True)))
        assert c.init().ok
        n = c.lookup(1, "f").nodeid
        setx = abi.fuse_setxattr_in.pack(5, 0, 0, 0)[:8]
        assert c.ok(Opcode.FUSE_SETXATTR, n, setx, cstr("user.k"), b"value") == b""
        assert os.getxattr(share / "f", "user.k") == b"value"
        assert c.ok(Opcode.FUSE_GETXATTR, n, abi.fuse_getxattr_in.pack(64, 0),
                    cstr("user.k")) == b"value"
        assert b"user.k\0" in c.ok(Opcode.FUSE_LISTXATTR, n, abi.fuse_getxattr_in.pack(4096, 0))
        XATTR_CREATE = 1
        setx = abi.fuse_setxattr_in.pack(1, XATTR_CREATE, 0, 0)[:8]
        assert c.call(Opcode.FUSE_SETXATTR, n, setx, cstr("user.k"), b"x").error \
            == -errno.EEXIST
        assert c.ok(Opcode.FUSE_REMOVEXATTR, n, cstr("user.k")) == b""
        assert os.listxattr(share / "f") == []
        assert c.call(Opcode.FUSE_GETXATTR, n, abi.fuse_getxattr_in.pack(64, 0),
                      cstr("user.k")).error == -errno.ENODATA
    finally:
        fs.close()


def test_xattrs_off_in_the_filesystem_too(share, passthrough):
    # the file system refuses even if a server lets the request through
    c = Client(Server(passthrough, ServerOptions(xattr=True)))
    assert c.init().ok
    assert c.call(Opcode.FUSE_LISTXATTR, 1, abi.fuse_getxattr_in.pack(0, 0)).error \
        == -errno.ENOSYS


def test_readonly_filesystem_refuses_even_under_a_permissive_server(share):
    (share / "f").write_bytes(b"x")
    fs = PassthroughFs(share, readonly=True)
    try:
        c = Client(Server(fs))
        assert c.init().ok
        assert c.call(Opcode.FUSE_MKDIR, 1, abi.fuse_mkdir_in.pack(0o755, 0),
                      cstr("d")).error == -errno.EROFS
        n = c.lookup(1, "f").nodeid
        assert c.call(Opcode.FUSE_OPEN, n, abi.fuse_open_in.pack(os.O_RDWR, 0)).error \
            == -errno.EROFS
        fh, _ = c.open(n, os.O_RDONLY)
        assert c.read(n, fh, 0, 1) == b"x"
        assert os.listdir(share) == ["f"]
    finally:
        fs.close()


def test_statx(client, share):
    (share / "f").write_bytes(b"abc")
    n = client.lookup(1, "f").nodeid
    sx = client.statx(n)
    st = os.stat(share / "f")
    assert sx.mask & 0x7FF == 0x7FF
    assert (sx.ino, sx.size, sx.mode, sx.nlink) == (st.st_ino, 3, st.st_mode, 1)
    assert sx.mtime_sec == int(st.st_mtime)
    assert (sx.dev_major, sx.dev_minor) == (os.major(st.st_dev), os.minor(st.st_dev))


# --- credentials ---------------------------------------------------------------------

@pytest.fixture
def as_user(passthrough):
    assert os.geteuid() == 0, "the credential tests need root (they run as root in CI)"
    server = Server(passthrough)
    root = Client(server)
    assert root.init().ok
    return Client(server, uid=1000, gid=1000)


def test_create_type_ops_run_as_the_caller(as_user, share):
    u = as_user
    d = u.mkdir(1, "dir")
    u.create(d.nodeid, "file", 0o644, os.O_RDWR | os.O_CREAT)
    u.mknod(d.nodeid, "fifo", stat.S_IFIFO | 0o644)
    u.symlink(d.nodeid, "link", "file")
    tmp, tfh, _ = u.tmpfile(d.nodeid)
    for p in ("dir", "dir/file", "dir/fifo", "dir/link"):
        st = os.lstat(share / p)
        assert (st.st_uid, st.st_gid) == (1000, 1000), p
    assert (tmp.attr.uid, tmp.attr.gid) == (1000, 1000)


def test_credentials_are_restored_after_each_op(as_user, share):
    as_user.mkdir(1, "d")
    assert os.getuid() == 0
    with open(share / "rootfile", "w"):
        pass
    assert os.stat(share / "rootfile").st_uid == 0
    # a root request after a user request creates root-owned files
    Client(as_user.server).mkdir(1, "rootdir")
    assert os.stat(share / "rootdir").st_uid == 0


def test_caller_permissions_apply_on_the_host(as_user, share):
    os.mkdir(share / "rootonly", 0o755)
    n = as_user.lookup(1, "rootonly").nodeid
    with pytest.raises(FuseError) as ei:
        as_user.mkdir(n, "x")
    assert ei.value.errno == errno.EACCES
    assert os.listdir(share / "rootonly") == []


def test_credentials_are_per_thread(passthrough, share):
    server = Server(passthrough)
    assert Client(server).init().ok
    errors = []

    def worker(uid):
        c = Client(server, uid=uid, gid=uid)
        try:
            for i in range(30):
                c.mkdir(1, f"u{uid}-{i}")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(uid,)) for uid in (0, 1000, 2000, 3000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in os.listdir(share):
        uid = int(name[1:].split("-")[0])
        st = os.stat(share / name)
        assert (st.st_uid, st.st_gid) == (uid, uid), name


def test_setfsuid_reports_the_previous_id():
    from pyvirtiofsd.passthrough import syscalls
    result = {}

    def worker():
        result["prev"] = syscalls.setfsuid(1234)
        result["again"] = syscalls.setfsuid(0)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert result == {"prev": 0, "again": 1234}


def test_destroy_closes_all_fds(share):
    (share / "f").write_bytes(b"x")
    before = open_fds()
    fs = PassthroughFs(share)
    c = Client(Server(fs))
    assert c.init().ok
    n = c.lookup(1, "f").nodeid
    c.open(n, os.O_RDONLY)
    c.opendir(1)
    assert len(open_fds() - before) >= 4
    assert c.ok(Opcode.FUSE_DESTROY, 0) == b""
    assert len(fs.inodes) == 1 and len(fs.handles) == 0
    fs.close()
    assert open_fds() == before


UNPRIVILEGED = r"""
import errno, os, sys
from pyvirtiofsd.filesystem import Context
from pyvirtiofsd.passthrough import PassthroughFs, syscalls
fs = PassthroughFs(sys.argv[1], switch_credentials=True)   # opened while still root
os.setgroups([]); os.setgid(1000); os.setuid(1000)
try:
    syscalls.setfsuid(0)
    print("setfsuid: no error")
except PermissionError:
    print("setfsuid: EPERM")
try:
    fs.mkdir(Context(1234, 1234, 1), 1, b"victim", 0o755)
    print("mkdir: created")
except OSError as e:
    print("mkdir:", errno.errorcode[e.errno])
"""


def test_failed_credential_switch_refuses_the_operation(share):
    """setfsuid cannot report failure itself; the wrapper notices and the create is refused
    instead of happening with the wrong owner."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", UNPRIVILEGED, str(share)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["setfsuid: EPERM", "mkdir: EPERM"]
    assert os.listdir(share) == []


def test_daemon_umask_is_not_applied_and_is_left_alone(client, share):
    """The guest already applied its caller's umask; the daemon's must not strip more, and
    serving a request must not change the umask of the thread (or process) serving it."""
    saved = os.umask(0o077)          # the worker thread starts out sharing this one
    seen = {}

    def worker():
        client.mkdir(1, "d", 0o777)
        client.create(1, "f", 0o666, os.O_RDWR | os.O_CREAT)
        client.mknod(1, "p", stat.S_IFIFO | 0o666)
        seen["worker"] = os.umask(0o077)

    try:
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        seen["main"] = os.umask(0o077)
    finally:
        os.umask(saved)
    assert seen == {"worker": 0o077, "main": 0o077}
    assert stat.S_IMODE(os.stat(share / "d").st_mode) == 0o777
    assert stat.S_IMODE(os.stat(share / "f").st_mode) == 0o666
    assert stat.S_IMODE(os.lstat(share / "p").st_mode) == 0o666
