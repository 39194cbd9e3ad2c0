"""Nothing the guest names resolves outside the shared directory, and the daemon never
follows a symlink."""
import errno
import os
import stat

import pytest
from fusewire import cstr

from pyvirtiofsd.filesystem import Context
from pyvirtiofsd.fuse import abi
from pyvirtiofsd.fuse.abi import Opcode
from pyvirtiofsd.passthrough import syscalls

CTX = Context(0, 0, 1)


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_bytes(b"SECRET")
    return d


@pytest.fixture(params=["openat2", "fallback"])
def resolver(request):
    """Run a test with openat2 and again with the no-openat2 fallback path."""
    syscalls.set_openat2_enabled(request.param == "openat2")
    yield request.param
    syscalls.set_openat2_enabled(True)


def test_symlink_to_etc_passwd_is_never_followed(client, share, resolver):
    os.symlink("/etc/passwd", share / "pw")
    e = client.lookup(1, "pw")
    # the inode is the symlink itself: its size is the length of the target string
    assert stat.S_ISLNK(e.attr.mode) and e.attr.size == len("/etc/passwd")
    assert e.attr.ino == os.lstat(share / "pw").st_ino != os.stat("/etc/passwd").st_ino
    assert client.readlink(e.nodeid) == b"/etc/passwd"
    assert client.call(Opcode.FUSE_OPEN, e.nodeid, abi.fuse_open_in.pack(os.O_RDONLY, 0)).error \
        == -errno.ELOOP
    assert client.call(Opcode.FUSE_OPENDIR, e.nodeid, abi.fuse_open_in.pack(0, 0)).error \
        == -errno.ENOTDIR
    # nor can it be used as a directory to reach /etc
    assert client.call(Opcode.FUSE_LOOKUP, e.nodeid, cstr("passwd")).error == -errno.ENOTDIR
    sx = client.statx(e.nodeid)
    assert stat.S_ISLNK(sx.mode)


def test_symlink_to_dotdot_and_to_outside_dir(client, share, outside, resolver):
    os.symlink("..", share / "up")
    os.symlink(str(outside), share / "out")
    for name in ("up", "out"):
        e = client.lookup(1, name)
        assert stat.S_ISLNK(e.attr.mode)
        for child in ("secret", "outside", "share"):
            r = client.call(Opcode.FUSE_LOOKUP, e.nodeid, cstr(child))
            assert r.error == -errno.ENOTDIR, (name, child)
    # a directory symlink's target is only text for the guest
    assert client.readlink(client.lookup(1, "out").nodeid) == str(outside).encode()


def test_setattr_on_a_symlink_never_touches_the_target(client, share, outside):
    os.symlink(str(outside / "secret"), share / "s")
    before = os.stat(outside / "secret")
    n = client.lookup(1, "s").nodeid
    client.setattr(n, valid=abi.FATTR_ATIME | abi.FATTR_MTIME, atime=1, mtime=1)
    client.setattr(n, valid=abi.FATTR_UID | abi.FATTR_GID, uid=99, gid=99)
    assert client.call(Opcode.FUSE_SETATTR, n, abi.fuse_setattr_in.build(
        valid=abi.FATTR_SIZE, size=0)).error == -errno.ELOOP
    after = os.stat(outside / "secret")
    assert (after.st_mtime_ns, after.st_uid, after.st_size) == \
        (before.st_mtime_ns, before.st_uid, before.st_size)
    assert (outside / "secret").read_bytes() == b"SECRET"


@pytest.mark.parametrize("name,code", [
    (b"a/b", errno.EINVAL), (b"/etc", errno.EINVAL), (b"../outside", errno.EINVAL),
    (b"", errno.EINVAL), (b"x" * 256, errno.ENAMETOOLONG), (b"x" * 1025, errno.ENAMETOOLONG),
])
def test_bad_names_in_lookup(client, share, name, code, resolver):
    assert client.call(Opcode.FUSE_LOOKUP, 1, name + b"\0").error == -code


@pytest.mark.parametrize("body", [b"a\0b\0", b"secret\0\0", b"\0secret\0", b"a\0/etc\0"])
def test_embedded_nul_is_refused(client, body):
    assert client.call(Opcode.FUSE_LOOKUP, 1, body).error == -errno.EINVAL
    assert client.call(Opcode.FUSE_MKDIR, 1, abi.fuse_mkdir_in.pack(0o755, 0), body).error \
        == -errno.EINVAL


def test_255_byte_name_is_fine(client, share):
    name = "n" * 255
    (share / name).write_bytes(b"")
    assert client.lookup(1, name).nodeid > 1


@pytest.mark.parametrize("name,code", [
    (b"a/b", errno.EINVAL), (b"", errno.EINVAL), (b".", errno.EINVAL), (b"..", errno.EINVAL),
    (b"x\0y", errno.EINVAL), (b"x" * 256, errno.ENAMETOOLONG),
])
def test_passthrough_refuses_bad_names_without_the_server(passthrough, share, name, code):
    """Defence in depth: PassthroughFs checks names itself, whatever calls it."""
    calls = [
        lambda: passthrough.mkdir(CTX, 1, name, 0o755),
        lambda: passthrough.mknod(CTX, 1, name, stat.S_IFREG | 0o644, 0),
        lambda: passthrough.symlink(CTX, b"t", 1, name),
        lambda: passthrough.create(CTX, 1, name, 0o644, os.O_RDWR),
        lambda: passthrough.unlink(CTX, 1, name),
        lambda: passthrough.rmdir(CTX, 1, name),
        lambda: passthrough.rename(CTX, 1, name, 1, b"z", 0),
        lambda: passthrough.rename(CTX, 1, b"z", 1, name, 0),
        lambda: passthrough.link(CTX, 1, 1, name),
    ]
    for call in calls:
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == code
    assert os.listdir(share) == []


@pytest.mark.parametrize("name", [b"../outside", b"a/../..", b"/", b"..\0"])
def test_passthrough_lookup_refuses_paths(passthrough, name):
    with pytest.raises(OSError) as ei:
        passthrough.lookup(CTX, 1, name)
    assert ei.value.errno == errno.EINVAL


def test_dotdot_at_the_root_is_the_root(client, passthrough, resolver):
    e = client.lookup(1, "..")
    assert e.nodeid == 1 and e.attr.ino == os.fstat(passthrough.inodes.root.fd).st_ino
    assert client.lookup(1, ".").nodeid == 1


def test_dot_and_dotdot_below_the_root(client, share):
    (share / "a" / "b").mkdir(parents=True)
    a = client.lookup(1, "a").nodeid
    b = client.lookup(a, "b").nodeid
    assert client.lookup(b, ".").nodeid == b
    assert client.lookup(b, "..").nodeid == a
    assert client.lookup(a, "..").nodeid == 1


def test_dotdot_never_reaches_an_inode_the_guest_does_not_hold(client, share, outside):
    (share / "a" / "b").mkdir(parents=True)
    b = client.lookup(client.lookup(1, "a").nodeid, "b").nodeid
    # the host moves b out of the share: its ".." is now outside
    os.rename(share / "a" / "b", outside / "b")
    assert client.call(Opcode.FUSE_LOOKUP, b, cstr("..")).error == -errno.EXDEV


def test_create_type_ops_refuse_dot_names(client):
    for name in (".", ".."):
        for op, body in [
            (Opcode.FUSE_MKDIR, abi.fuse_mkdir_in.pack(0o755, 0) + cstr(name)),
            (Opcode.FUSE_MKNOD, abi.fuse_mknod_in.pack(0o100644, 0, 0, 0) + cstr(name)),
            (Opcode.FUSE_CREATE, abi.fuse_create_in.pack(os.O_RDWR, 0o644, 0, 0) + cstr(name)),
            (Opcode.FUSE_SYMLINK, cstr(name) + cstr("t")),
            (Opcode.FUSE_LINK, abi.fuse_link_in.pack(1) + cstr(name)),
            (Opcode.FUSE_RMDIR, cstr(name)),
            (Opcode.FUSE_UNLINK, cstr(name)),
            (Opcode.FUSE_RENAME, abi.fuse_rename_in.pack(1) + cstr(name) + cstr("x")),
        ]:
            assert client.call(op, 1, body).error == -errno.EINVAL, (op, name)


def test_device_nodes_and_fifos_are_never_opened(client, share):
    client.mknod(1, "null", stat.S_IFCHR | 0o666, rdev=0x103)   # /dev/null's numbers
    client.mknod(1, "fifo", stat.S_IFIFO | 0o666)
    for name in ("null", "fifo"):
        n = client.lookup(1, name).nodeid
        assert client.call(Opcode.FUSE_OPEN, n, abi.fuse_open_in.pack(os.O_RDWR, 0)).error \
            == -errno.EACCES


def test_guest_made_symlink_to_outside_is_inert(client, outside):
    e = client.symlink(1, "escape", str(outside / "secret"))
    assert client.call(Opcode.FUSE_OPEN, e.nodeid, abi.fuse_open_in.pack(os.O_RDONLY, 0)).error \
        == -errno.ELOOP
    assert client.call(Opcode.FUSE_LOOKUP, e.nodeid, cstr("x")).error == -errno.ENOTDIR


def test_intermediate_symlinked_dir_is_not_traversed(client, share, outside, resolver):
    """Replacing a directory the guest holds with a symlink does not redirect lookups:
    the inode is the O_PATH fd of the old directory, never a path re-resolved."""
    (share / "d").mkdir()
    d = client.lookup(1, "d").nodeid
    os.rename(share / "d", share / "d.old")
    os.symlink(str(outside), share / "d")
    assert client.call(Opcode.FUSE_LOOKUP, d, cstr("secret")).error == -errno.ENOENT
    assert client.call(Opcode.FUSE_LOOKUP, 1, cstr("d")).error == 0
    assert stat.S_ISLNK(client.lookup(1, "d").attr.mode)


def test_fallback_resolver_refuses_multi_component_paths(share):
    syscalls.set_openat2_enabled(False)
    try:
        fd = os.open(share, os.O_PATH | os.O_DIRECTORY)
        try:
            for path in (b"a/b", b"..", b""):
                with pytest.raises(OSError) as ei:
                    syscalls.openat2(fd, path, os.O_PATH | os.O_NOFOLLOW, 0)
                assert ei.value.errno == errno.EXDEV
            os.symlink("/etc", share / "etc")
            sfd = syscalls.openat2(fd, b"etc", os.O_PATH | os.O_NOFOLLOW, 0)
            assert stat.S_ISLNK(os.fstat(sfd).st_mode)
            os.close(sfd)
        finally:
            os.close(fd)
    finally:
        syscalls.set_openat2_enabled(True)


def test_openat2_refuses_escapes():
    fd = os.open("/tmp", os.O_PATH | os.O_DIRECTORY)
    try:
        flags = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_MAGICLINKS
        for path in (b"..", b"../etc/passwd", b"/etc/passwd"):
            with pytest.raises(OSError) as ei:
                syscalls.openat2(fd, path, os.O_PATH, flags)
            assert ei.value.errno == errno.EXDEV
    finally:
        os.close(fd)
